package apitest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anvilproject/anvil/test/harness"
)

// selfSigned writes a certificate for 127.0.0.1 and its key.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "anvil test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// TestTLS serves the API over HTTPS from the configured certificate.
func TestTLS(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t, t.TempDir())
	d := harness.Start(t, harness.Options{Args: []string{"--api-tls-cert", certFile, "--api-tls-key", keyFile}})
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 5 * time.Second}
	base := "https://" + d.API
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := hc.Get(base + "/api/v1/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("HTTPS health: %v\n%s", err, d.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Plain HTTP to the TLS port is not served.
	if resp, err := http.Get("http://" + d.API + "/api/v1/health"); err == nil {
		if resp.StatusCode == 200 {
			t.Errorf("plain HTTP answered 200 on the TLS port")
		}
		resp.Body.Close()
	}
	token, _ := os.ReadFile(filepath.Join(d.DataDir, "api.token"))
	req, _ := http.NewRequest("GET", base+"/api/v1/volumes", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	resp, err := hc.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("HTTPS volumes: %v %v", err, resp)
	}
	resp.Body.Close()

	c := cli{t: t, bin: harness.Binary(t), d: &daemon{Daemon: d, t: t}}
	out, errOut, err := c.run(nil, "", "volume", "list", "--api", base, "--ca-cert", certFile, "--data-dir", d.DataDir)
	if err != nil || !strings.Contains(out, "demo") {
		t.Errorf("CLI over HTTPS: %v\n%s\n%s", err, out, errOut)
	}
	if _, errOut, err := c.run(nil, "", "volume", "list", "--api", base, "--data-dir", d.DataDir); err == nil || !strings.Contains(errOut, "certificate") {
		t.Errorf("CLI trusted an unknown certificate: %v %s", err, errOut)
	}
	if out, errOut, err := c.run(nil, "", "health", "--api", base, "--insecure-skip-verify"); err != nil || !strings.HasPrefix(out, "ok:") {
		t.Errorf("health over HTTPS: %v %s %s", err, out, errOut)
	}
}

// TestCHAPLogin sets CHAP through the API and checks it with libiscsi:
// without credentials or with a wrong secret the login fails, with the
// right ones it succeeds; removing CHAP admits anonymous logins again.
func TestCHAPLogin(t *testing.T) {
	harness.NeedTool(t, "iscsi-inq")
	d := start(t, harness.Options{})
	const user, secret = "alice", "alice-secret-123"
	d.must("PUT", "/api/v1/targets/"+harness.DemoIQN+"/chap", `{"user":"`+user+`","secret":"`+secret+`"}`, 200, nil)
	plain := "iscsi://" + d.ISCSI + "/" + harness.DemoIQN + "/0"
	withCreds := func(u, s string) string {
		return "iscsi://" + u + "%" + s + "@" + d.ISCSI + "/" + harness.DemoIQN + "/0"
	}
	if out, err := run(t, "iscsi-inq", plain); err == nil {
		t.Errorf("login without CHAP credentials succeeded:\n%s", out)
	}
	if out, err := run(t, "iscsi-inq", withCreds(user, "wrong-secret-0000")); err == nil {
		t.Errorf("login with a wrong CHAP secret succeeded:\n%s", out)
	}
	if out, err := run(t, "iscsi-inq", withCreds(user, secret)); err != nil || !strings.Contains(out, "ANVIL") {
		t.Errorf("login with the CHAP secret failed: %v\n%s", err, out)
	}
	_, body := d.call("GET", "/api/v1/targets/"+harness.DemoIQN, "")
	if strings.Contains(string(body), secret) {
		t.Errorf("GET target returns the CHAP secret: %s", body)
	}
	d.must("DELETE", "/api/v1/targets/"+harness.DemoIQN+"/chap", "", 204, nil)
	if out, err := run(t, "iscsi-inq", plain); err != nil {
		t.Errorf("anonymous login after removing CHAP failed: %v\n%s", err, out)
	}
}
