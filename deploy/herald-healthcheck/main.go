// Command herald-healthcheck is the container healthcheck of Herald's image:
// it fetches one URL and exits 0 when the answer is 2xx, 1 otherwise. The
// runtime image has no shell, curl or wget, and a healthcheck cannot be the
// program itself (it would only prove a second copy starts), so the image
// carries this one static binary instead:
//
//	healthcheck:
//	  test: ["CMD", "herald-healthcheck", "http://127.0.0.1:9090/readyz"]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("herald-healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	timeout := fs.Duration("timeout", 3*time.Second, "longest wait for the answer")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: herald-healthcheck [-timeout 3s] URL")
		fmt.Fprintln(stderr, "Exits 0 when GET URL answers 2xx, 1 otherwise, 2 on a usage error.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	u, err := url.Parse(fs.Arg(0))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		fmt.Fprintf(stderr, "herald-healthcheck: %q is not an http(s) URL; give e.g. http://127.0.0.1:9090/healthz\n", fs.Arg(0))
		return 2
	}
	if err := check(u.String(), *timeout); err != nil {
		fmt.Fprintf(stderr, "herald-healthcheck: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, "ok")
	return 0
}

// check fetches u and reports an error unless the answer is 2xx; the error
// carries the start of the body, where Herald's /readyz says what is wrong.
func check(u string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("building the request for %s: %w", u, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w (is the program running with HERALD_METRICS_ADDR on that port?)", u, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("GET %s: %s: %s", u, resp.Status, strings.Join(strings.Fields(string(body)), " "))
	}
	return nil
}
