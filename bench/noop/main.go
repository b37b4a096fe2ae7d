// Command noop is the ceiling for spate bench edge: a do-nothing net/http
// server that reads each request's body and answers 202 with one receipt,
// as the edge answers a single event, and does nothing else. Run it, then
// load it as the edge:
//
//	go run ./bench/noop &
//	spate bench edge --url http://127.0.0.1:8089 --connections 64 --duration 8s
//
// The edge's single-event requests/s over this server's, measured in the
// same run, is a figure that a shared machine's drift leaves alone.
package main

import (
	"flag"
	"io"
	"log"
	"net/http"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8089", "address to listen on")
	flag.Parse()
	body := []byte(`{"receipts":[{"id":"order-1","topic":"spate.events","partition":0,"offset":1}]}` + "\n")
	log.Fatal(http.ListenAndServe(*addr, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		w.Write(body)
	})))
}
