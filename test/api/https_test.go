package apitest

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anvilproject/anvil/api"
	"github.com/anvilproject/anvil/test/harness"
)

// allInterfaces is a listen address on every interface with a free port:
// not loopback, so the daemon's default is HTTPS.
func allInterfaces(t *testing.T) (listen, loopback string) {
	_, port, _ := net.SplitHostPort(harness.FreePort(t))
	return "0.0.0.0:" + port, "127.0.0.1:" + port
}

// waitHTTPS waits for the API to answer health over HTTPS, verified
// against the data directory's certificate, and returns that certificate.
func waitHTTPS(t *testing.T, d *harness.Daemon, addr string) *x509.Certificate {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if b, err := os.ReadFile(filepath.Join(d.DataDir, api.CertFile)); err == nil {
			if blk, _ := pem.Decode(b); blk != nil {
				cert, err := x509.ParseCertificate(blk.Bytes)
				if err != nil {
					t.Fatal(err)
				}
				pool := x509.NewCertPool()
				pool.AddCert(cert)
				hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
				resp, err := hc.Get("https://" + addr + "/api/v1/health")
				if err == nil {
					resp.Body.Close()
					if resp.StatusCode == 200 {
						return cert
					}
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no HTTPS health on %s verified by %s:\n%s", addr, api.CertFile, d.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestHTTPSDefault checks the default on a non-loopback address: HTTPS
// with a self-signed certificate made once in the data directory (mode
// 0600, its fingerprint logged) and kept across restarts; a client
// without the certificate fails verification; the CLI and the health
// check trust it through the data directory.
func TestHTTPSDefault(t *testing.T) {
	listen, addr := allInterfaces(t)
	d := harness.Start(t, harness.Options{API: listen})
	cert := waitHTTPS(t, d, addr)
	for _, f := range []string{api.CertFile, api.KeyFile} {
		st, err := os.Stat(filepath.Join(d.DataDir, f))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v mode %v, want 0600", f, err, st.Mode().Perm())
		}
	}
	fp := api.Fingerprint(cert.Raw)
	if !strings.Contains(d.Log(), fp) || !strings.Contains(d.Log(), "generated a self-signed API certificate") {
		t.Errorf("fingerprint %s not logged at generation:\n%s", fp, d.Log())
	}
	for _, h := range []string{"localhost", "127.0.0.1", "::1"} {
		if err := cert.VerifyHostname(h); err != nil {
			t.Errorf("certificate does not cover %s: %v", h, err)
		}
	}
	if host, _ := os.Hostname(); host != "" && cert.VerifyHostname(host) != nil {
		t.Errorf("certificate does not cover the host name %s", host)
	}

	// Without the certificate a client cannot verify the server.
	_, err := http.Get("https://" + addr + "/api/v1/health")
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Errorf("client without the certificate: %v, want an unknown authority error", err)
	}
	// No plain HTTP on the port.
	if resp, err := http.Get("http://" + addr + "/api/v1/health"); err == nil {
		if resp.StatusCode == 200 {
			t.Errorf("plain HTTP served on the HTTPS port")
		}
		resp.Body.Close()
	}

	c := cli{t: t, bin: harness.Binary(t)}
	for _, a := range []string{addr, "https://" + addr, "https://localhost:" + strings.Split(addr, ":")[1], listen} {
		out, errOut, err := c.run(nil, "", "volume", "list", "--api", a, "--data-dir", d.DataDir)
		if err != nil || !strings.Contains(out, "demo") {
			t.Errorf("CLI over HTTPS with --api %s: %v\n%s\n%s", a, err, out, errOut)
		}
	}
	// The container's HEALTHCHECK form: the data directory from the
	// environment, the address on loopback.
	if out, errOut, err := c.run(nil, "", "health", "--api", addr, "--data-dir", d.DataDir); err != nil || !strings.HasPrefix(out, "ok:") {
		t.Errorf("health over HTTPS: %v %s %s", err, out, errOut)
	}
	if out, errOut, err := c.run([]string{"ANVIL_DATA_DIR=" + d.DataDir}, "", "health", "--api", addr); err != nil || !strings.HasPrefix(out, "ok:") {
		t.Errorf("health over HTTPS, data dir from the environment: %v %s %s", err, out, errOut)
	}
	if _, _, err := c.run(nil, "", "health", "--api", addr, "--data-dir", t.TempDir()); err == nil {
		t.Errorf("health trusted an unknown certificate")
	}
	// A data directory without the certificate: verification fails.
	token, _ := os.ReadFile(filepath.Join(d.DataDir, "api.token"))
	_, errOut, err := c.run([]string{"ANVIL_API_TOKEN=" + strings.TrimSpace(string(token))}, "", "volume", "list", "--api", addr, "--data-dir", t.TempDir())
	if err == nil || !strings.Contains(errOut, "certificate") {
		t.Errorf("CLI without the certificate: %v %s", err, errOut)
	}

	// A restart keeps the certificate.
	before, _ := os.ReadFile(filepath.Join(d.DataDir, api.CertFile))
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	d.Restart()
	again := waitHTTPS(t, d, addr)
	after, _ := os.ReadFile(filepath.Join(d.DataDir, api.CertFile))
	if string(before) != string(after) || !again.Equal(cert) {
		t.Errorf("the certificate changed across a restart")
	}
	if !strings.Contains(d.Log(), fp) {
		t.Errorf("fingerprint not logged after restart:\n%s", d.Log())
	}
}

// TestTLSModes checks when plain HTTP is served: on loopback by default
// (and no certificate is made), or with --api-tls=false anywhere; and that
// --api-tls=on gives HTTPS on loopback too.
func TestTLSModes(t *testing.T) {
	plain := func(addr string) bool {
		resp, err := http.Get("http://" + addr + "/api/v1/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}
	wait := func(d *harness.Daemon, addr string) {
		deadline := time.Now().Add(30 * time.Second)
		for !plain(addr) {
			if time.Now().After(deadline) {
				t.Fatalf("no plain HTTP health on %s:\n%s", addr, d.Log())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	lo := harness.Start(t, harness.Options{})
	wait(lo, lo.API)
	if _, err := os.Stat(filepath.Join(lo.DataDir, api.CertFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a loopback daemon made a certificate: %v", err)
	}

	listen, addr := allInterfaces(t)
	off := harness.Start(t, harness.Options{API: listen, Args: []string{"--api-tls=false"}})
	wait(off, addr)
	c := cli{t: t, bin: harness.Binary(t)}
	if out, errOut, err := c.run(nil, "", "volume", "list", "--api", addr, "--data-dir", off.DataDir); err != nil || !strings.Contains(out, "demo") {
		t.Errorf("CLI against plain HTTP on loopback: %v\n%s\n%s", err, out, errOut)
	}
	off.Kill()

	on := harness.Start(t, harness.Options{Args: []string{"--api-tls", "on"}})
	waitHTTPS(t, on, on.API)
	if plain(on.API) {
		t.Errorf("--api-tls on served plain HTTP")
	}
}
