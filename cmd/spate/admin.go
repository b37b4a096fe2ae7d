package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// check is one readiness dependency: Kafka, Postgres, Redis.
type check struct {
	name string
	ping func(context.Context) error
}

// newMetrics returns a registry with the Go and process collectors.
func newMetrics() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// adminHandler serves /metrics, /healthz (the process is up), /readyz (every
// check answers within 2 s; a 503 names each failing check and its error)
// and /debug/pprof/, but for /debug/pprof/cmdline: a command line may hold
// a URL with its password.
func adminHandler(reg *prometheus.Registry, checks []check) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		// Together, each with 2 s of its own: one that hangs does not use
		// up the others' time and get them reported too.
		errs := make([]error, len(checks))
		var wg sync.WaitGroup
		for i, c := range checks {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
				defer cancel()
				errs[i] = c.ping(ctx)
			})
		}
		wg.Wait()
		status, code := map[string]string{}, http.StatusOK
		for i, c := range checks {
			if errs[i] != nil {
				status[c.name], code = "unavailable: "+errs[i].Error(), http.StatusServiceUnavailable
			} else {
				status[c.name] = "ok"
			}
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(status)
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// serveHTTP serves h on ln until ctx ends, then shuts down within 5 s.
// Requests see ctx end (a CPU profile in progress stops), and one that still
// runs after 5 s is cut off: stopping is not a failure of the command.
func serveHTTP(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("admin requests still running at shutdown: cut off", "addr", ln.Addr().String(), "err", err)
		srv.Close()
	}
	if e := <-errc; !errors.Is(e, http.ErrServerClosed) {
		return fmt.Errorf("serve %s: %w", ln.Addr(), e)
	}
	return nil
}

// listen opens a TCP listener, naming the flag in the error.
func listen(flag, addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", flag, err)
	}
	return ln, nil
}

// listenEdgeAdmin opens the edge's listener and the admin server's.
func listenEdgeAdmin(edgeAddr, adminAddr string) (edge, admin net.Listener, err error) {
	if edge, err = listen("edge-addr", edgeAddr); err != nil {
		return nil, nil, err
	}
	if admin, err = listen("admin-addr", adminAddr); err != nil {
		_, edgePort, _ := net.SplitHostPort(edge.Addr().String())
		if _, port, serr := net.SplitHostPort(adminAddr); serr == nil && port == edgePort && errors.Is(err, syscall.EADDRINUSE) {
			err = fmt.Errorf("--admin-addr %s and --edge-addr %s share port %s: give the admin server a port of its own", adminAddr, edgeAddr, port)
		}
		edge.Close()
		return nil, nil, err
	}
	return edge, admin, nil
}
