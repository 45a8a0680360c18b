package api

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// CertFile and KeyFile are the names, in the data directory, of the
// self-signed certificate the API serves HTTPS with when none is
// configured. Clients on the same machine trust DATA_DIR/api.crt.
const (
	CertFile = "api.crt"
	KeyFile  = "api.key"
)

// certValidity is how long a generated certificate lasts: the longest
// validity common TLS clients accept for a server certificate from a
// private CA. A daemon started after (or near) expiry makes a new one.
const certValidity = 825 * 24 * time.Hour

// certRenewBefore is how long before expiry a start-up replaces the
// certificate, so a running daemon does not reach the expiry date.
const certRenewBefore = 30 * 24 * time.Hour

// SelfSignedCert is the certificate EnsureCertificate returns.
type SelfSignedCert struct {
	CertFile, KeyFile string
	// Fingerprint is the SHA-256 of the certificate (DER), as colon-
	// separated hex, the form `openssl x509 -fingerprint -sha256` prints.
	Fingerprint string
	// Created says the certificate was made by this call.
	Created bool
	// Missing lists requested names or addresses the certificate (made at
	// an earlier start) does not cover.
	Missing []string
}

// Fingerprint returns the SHA-256 fingerprint of a DER certificate.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(parts, ":")
}

// CertHosts lists the names a generated certificate covers: the machine's
// host name, localhost and the loopback addresses, plus the API's listen
// host when it is a specific one.
func CertHosts(listen string) []string {
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	if h, err := os.Hostname(); err == nil && h != "" {
		hosts = append(hosts, h)
	}
	if h, _, err := net.SplitHostPort(listen); err == nil && h != "" {
		if ip := net.ParseIP(h); ip == nil || !ip.IsUnspecified() {
			hosts = append(hosts, h)
		}
	}
	slices.Sort(hosts)
	return slices.Compact(hosts)
}

// EnsureCertificate returns the data directory's API certificate, making a
// self-signed ECDSA P-256 one for hosts the first time (or when the old
// one has expired or is about to). Both files are mode 0600.
func EnsureCertificate(dataDir string, hosts []string) (SelfSignedCert, error) {
	c := SelfSignedCert{CertFile: filepath.Join(dataDir, CertFile), KeyFile: filepath.Join(dataDir, KeyFile)}
	pair, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	switch {
	case err == nil:
		leaf, perr := x509.ParseCertificate(pair.Certificate[0])
		if perr != nil {
			return c, fmt.Errorf("API certificate %s: %w", c.CertFile, perr)
		}
		if time.Now().Add(certRenewBefore).Before(leaf.NotAfter) {
			c.Fingerprint = Fingerprint(leaf.Raw)
			for _, h := range hosts {
				if leaf.VerifyHostname(h) != nil {
					c.Missing = append(c.Missing, h)
				}
			}
			return c, nil
		}
		// Expired or about to: make a new one below.
	case errors.Is(err, os.ErrNotExist):
		if _, serr := os.Stat(c.CertFile); serr == nil {
			return c, fmt.Errorf("API certificate %s exists but its key %s does not; remove the certificate to have a new pair generated", c.CertFile, c.KeyFile)
		}
		if _, serr := os.Stat(c.KeyFile); serr == nil {
			return c, fmt.Errorf("API key %s exists but its certificate %s does not; remove the key to have a new pair generated", c.KeyFile, c.CertFile)
		}
	default:
		return c, fmt.Errorf("API certificate: %w", err)
	}

	der, keyDER, err := newSelfSigned(hosts)
	if err != nil {
		return c, fmt.Errorf("generate API certificate: %w", err)
	}
	// The key goes first: a crash in between leaves a key without a
	// certificate, which the next start reports instead of serving a
	// certificate whose key is lost.
	if err := writeFileAtomic(c.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})); err != nil {
		return c, fmt.Errorf("write API key: %w", err)
	}
	if err := writeFileAtomic(c.CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})); err != nil {
		return c, fmt.Errorf("write API certificate: %w", err)
	}
	c.Fingerprint, c.Created = Fingerprint(der), true
	return c, nil
}

func newSelfSigned(hosts []string) (der, keyDER []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "Anvil API", Organization: []string{"Anvil (self-signed)"}},
		NotBefore:    now.Add(-time.Hour), // tolerate clocks slightly behind
		NotAfter:     now.Add(certValidity),
		// Its own CA as well, so that tools which insist on a CA
		// certificate in their trust store (curl --cacert) accept it.
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err = x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err = x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return der, keyDER, nil
}

// writeFileAtomic writes b to path with mode 0600 through a temporary file
// and a rename, so path is never seen half written.
func writeFileAtomic(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// CertFileFingerprint returns the SHA-256 fingerprint of the first
// certificate in a PEM file (a configured api.tls_cert).
func CertFileFingerprint(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return "", fmt.Errorf("%s: no PEM certificate", path)
		}
		if blk.Type == "CERTIFICATE" {
			return Fingerprint(blk.Bytes), nil
		}
	}
}

// IsLoopback reports whether a listen address (host:port) accepts only
// loopback connections; an empty or unspecified host listens everywhere.
func IsLoopback(listen string) bool {
	h, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}
