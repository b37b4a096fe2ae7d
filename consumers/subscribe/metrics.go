package subscribe

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	handled       *prometheus.CounterVec
	handlerErrors *prometheus.CounterVec
	deadLetters   *prometheus.CounterVec
	claimed       *prometheus.CounterVec
	deleted       *prometheus.CounterVec
	lag           *prometheus.GaugeVec
	pending       *prometheus.GaugeVec
}

// newMetrics returns the subscriber metrics, registered with reg unless it
// is nil. Collectors another subscriber registered with reg are shared.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	labels := []string{"group", "stream"}
	var errs []error
	counter := func(name, help string) *prometheus.CounterVec {
		c, err := register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels))
		errs = append(errs, err)
		return c
	}
	gauge := func(name, help string) *prometheus.GaugeVec {
		g, err := register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels))
		errs = append(errs, err)
		return g
	}
	m := &metrics{
		handled:       counter("spate_subscriber_messages_total", "Stream entries handled and acknowledged."),
		handlerErrors: counter("spate_subscriber_handler_errors_total", "Handler calls that returned an error."),
		deadLetters:   counter("spate_subscriber_dead_letters_total", "Stream entries copied to the dead-letter stream and acknowledged."),
		claimed:       counter("spate_subscriber_claimed_total", "Pending stream entries taken over after ClaimIdle (XAUTOCLAIM), to be delivered again."),
		deleted:       counter("spate_subscriber_deleted_total", "Pending stream entries dropped because they were deleted from the stream before being handled."),
		lag:           gauge("spate_subscriber_lag_entries", "Entries of the stream not yet delivered to the group (XINFO GROUPS lag), at the last refresh."),
		pending:       gauge("spate_subscriber_pending_entries", "Entries delivered to the group and not yet acknowledged (XINFO GROUPS pending), at the last refresh."),
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c with reg, or returns the collector of the same
// description registered before. A nil reg registers nothing.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if reg == nil {
		return c, nil
	}
	err := reg.Register(c)
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if prev, ok := are.ExistingCollector.(C); ok {
			return prev, nil
		}
	}
	return c, err
}
