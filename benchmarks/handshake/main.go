// What one new connection costs the API server and the webhook: POSTs of one AdmissionReview
// to `gpu-webhook serve`, each on a fresh connection (a TCP connect and a full TLS handshake:
// client-go's webhook transport keeps no TLS session cache) or all on kept-alive connections,
// from a Go client set up as client-go's webhook transport is (crypto/tls defaults, a CA pool,
// optionally the API server's client certificate). Prints this process's CPU per request and
// the server's (/proc/PID/stat), one line. Driven by benchmarks/handshake.py.
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func processCPU(pid int) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		panic(err)
	}
	text := string(raw)
	fields := strings.Fields(text[strings.LastIndex(text, ")")+1:])
	user, _ := strconv.Atoi(fields[11])
	system, _ := strconv.Atoi(fields[12])
	return float64(user+system) / float64(100) // USER_HZ
}

func main() {
	url := flag.String("url", "", "https://127.0.0.1:PORT/mutate")
	ca := flag.String("ca", "", "the webhook's CA file")
	cert := flag.String("cert", "", "client certificate to present (with -key), as the API server does")
	key := flag.String("key", "", "its key")
	body := flag.String("body", "", "the AdmissionReview to POST")
	requests := flag.Int("n", 2000, "requests")
	workers := flag.Int("c", 4, "concurrent clients")
	pid := flag.Int("pid", 0, "the server's pid")
	fresh := flag.Bool("fresh", false, "a new connection for every request")
	flag.Parse()

	pem, err := os.ReadFile(*ca)
	if err != nil {
		panic(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	config := &tls.Config{RootCAs: pool}
	if *cert != "" {
		pair, err := tls.LoadX509KeyPair(*cert, *key)
		if err != nil {
			panic(err)
		}
		config.Certificates = []tls.Certificate{pair}
	}
	data, err := os.ReadFile(*body)
	if err != nil {
		panic(err)
	}
	// HTTP/1.1 only, as the API server calls a webhook registered by Service reference.
	transport := &http.Transport{TLSClientConfig: config, MaxIdleConnsPerHost: 25, DisableKeepAlives: *fresh,
		TLSHandshakeTimeout: 10 * time.Second, TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}
	client := &http.Client{Transport: transport}
	post := func() {
		resp, err := client.Post(*url, "application/json", bytes.NewReader(data))
		if err != nil {
			panic(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			panic(resp.Status)
		}
	}
	for i := 0; i < 50; i++ { // warm-up
		post()
	}
	client0, server0, wall0 := selfCPU(), processCPU(*pid), time.Now()
	var wg sync.WaitGroup
	each := *requests / *workers
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				post()
			}
		}()
	}
	wg.Wait()
	done := float64(each * *workers)
	fmt.Printf("%.4f %.4f %.1f\n", 1000*(selfCPU()-client0)/done, 1000*(processCPU(*pid)-server0)/done,
		done/time.Since(wall0).Seconds())
}
