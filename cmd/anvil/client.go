package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/anvilproject/anvil/api"
)

// clientFlags are the connection and output flags every API client
// subcommand takes.
type clientFlags struct {
	addr     string
	token    string
	dataDir  string
	output   string
	caCert   string
	insecure bool
}

// addClientFlags declares the client flags on a command group. Defaults
// come from the environment so that scripts can set them once.
func addClientFlags(cmd *cobra.Command, f *clientFlags) {
	fs := cmd.PersistentFlags()
	fs.StringVar(&f.addr, "api", "", "API address, host:port or URL (env ANVIL_API, else ANVIL_API_LISTEN, else 127.0.0.1:8080)")
	fs.StringVar(&f.token, "token", "", "API bearer token (env ANVIL_API_TOKEN, else read from DATA_DIR/api.token)")
	fs.StringVar(&f.dataDir, "data-dir", "", "daemon data directory holding api.token and api.crt (env ANVIL_DATA_DIR, else ./anvil-data, then /var/lib/anvil)")
	fs.StringVarP(&f.output, "output", "o", "table", "output format: table or json")
	fs.StringVar(&f.caCert, "ca-cert", "", "PEM CA certificate to verify an https API with (default: the system roots and DATA_DIR/api.crt)")
	fs.BoolVar(&f.insecure, "insecure-skip-verify", false, "do not verify the https API's certificate")
}

// client is a REST API client.
type client struct {
	base   string
	token  string
	http   *http.Client
	output string
}

// apiAddr is where a client reaches the API: base is its URL; probe says
// the scheme was not given and the address is on loopback, where a daemon
// may serve plain HTTP (api.tls auto), so https is tried first and http
// used if the daemon answers in plain HTTP.
type apiAddr struct {
	base  string
	probe bool
}

// baseURL turns an address setting into the API's base URL. A listen
// address on all interfaces (0.0.0.0, [::] or an empty host) is reached
// over loopback. Without a scheme the daemon's own default is assumed:
// https, except that a loopback address may turn out to be plain http.
func baseURL(addr string) (apiAddr, error) {
	if strings.Contains(addr, "://") {
		u, err := url.Parse(addr)
		if err != nil {
			return apiAddr{}, fmt.Errorf("API address %q: %w", addr, err)
		}
		return apiAddr{base: strings.TrimSuffix(u.String(), "/")}, nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return apiAddr{}, fmt.Errorf("API address %q: %w", addr, err)
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	hp := net.JoinHostPort(host, port)
	return apiAddr{base: "https://" + hp, probe: api.IsLoopback(hp)}, nil
}

// resolve settles a probed address's scheme with one health request: a
// daemon that answers TLS with plain HTTP is reached over http. Other
// failures leave https, so the real request reports them.
func (a apiAddr) resolve(hc *http.Client) string {
	if !a.probe {
		return a.base
	}
	probe := *hc
	probe.Timeout = 5 * time.Second
	resp, err := probe.Get(a.base + "/api/v1/health")
	if err == nil {
		resp.Body.Close()
		return a.base
	}
	if errors.Is(err, http.ErrSchemeMismatch) {
		return "http://" + strings.TrimPrefix(a.base, "https://")
	}
	return a.base
}

// dataDirs are the directories searched for api.token and api.crt: the
// one given, else ANVIL_DATA_DIR, ./anvil-data and /var/lib/anvil.
func dataDirs(given string) []string {
	if given != "" {
		return []string{given}
	}
	return []string{os.Getenv("ANVIL_DATA_DIR"), "./anvil-data", "/var/lib/anvil"}
}

// apiTransport is an HTTP transport that verifies an https API against
// caCert when given, else against the system roots plus the daemon's
// self-signed DATA_DIR/api.crt from the first data directory that has one.
func apiTransport(caCert string, insecure bool, dirs []string) (*http.Transport, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	cfg := &tls.Config{InsecureSkipVerify: insecure}
	tr.TLSClientConfig = cfg
	if insecure {
		return tr, nil
	}
	if caCert != "" {
		pem, err := os.ReadFile(caCert)
		if err != nil {
			return nil, fmt.Errorf("--ca-cert: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca-cert %s: no PEM certificates", caCert)
		}
		return tr, nil
	}
	for _, d := range dirs {
		if d == "" {
			continue
		}
		pem, err := os.ReadFile(filepath.Join(d, api.CertFile))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read the API certificate: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no PEM certificates", filepath.Join(d, api.CertFile))
		}
		cfg.RootCAs = pool
		break
	}
	return tr, nil
}

// explain adds what to do to the transport errors a user can fix.
func explain(err error, base string) error {
	var unknown x509.UnknownAuthorityError
	var host x509.HostnameError
	switch {
	case errors.As(err, &unknown):
		return fmt.Errorf("%w (trust the daemon's certificate with --data-dir pointing at its data directory, which holds %s, or with --ca-cert)", err, api.CertFile)
	case errors.As(err, &host):
		return fmt.Errorf("%w (the certificate does not name this address; connect by a name it covers)", err)
	case errors.Is(err, http.ErrSchemeMismatch):
		return fmt.Errorf("%w (the daemon serves plain HTTP; give --api %s to use it)", err, "http://"+strings.TrimPrefix(base, "https://"))
	}
	return err
}

func (f *clientFlags) client() (*client, error) {
	if f.output != "table" && f.output != "json" {
		return nil, fmt.Errorf("--output %q: must be table or json", f.output)
	}
	addr := f.addr
	for _, env := range []string{"ANVIL_API", "ANVIL_API_LISTEN"} {
		if addr == "" {
			addr = os.Getenv(env)
		}
	}
	if addr == "" {
		addr = "127.0.0.1:8080"
	}
	a, err := baseURL(addr)
	if err != nil {
		return nil, err
	}
	token := f.token
	if token == "" {
		token = os.Getenv("ANVIL_API_TOKEN")
	}
	if token == "" {
		if token, err = f.tokenFromDataDir(); err != nil {
			return nil, err
		}
	}
	tr, err := apiTransport(f.caCert, f.insecure, dataDirs(f.dataDir))
	if err != nil {
		return nil, err
	}
	hc := &http.Client{Transport: tr}
	return &client{base: a.resolve(hc) + "/api/v1", token: token, http: hc, output: f.output}, nil
}

func (f *clientFlags) tokenFromDataDir() (string, error) {
	for _, d := range dataDirs(f.dataDir) {
		if d == "" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(d, api.TokenFile))
		if err == nil {
			return strings.TrimSpace(string(b)), nil
		}
		if f.dataDir != "" || !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("read API token: %w", err)
		}
	}
	return "", errors.New("no API token: give --token, set ANVIL_API_TOKEN, or point --data-dir at the daemon's data directory")
}

// apiError is an error answer from the daemon.
type apiError struct {
	status int
	body   api.ErrorBody
}

func (e *apiError) Error() string {
	msg := fmt.Sprintf("%s (HTTP %d)", e.body.Error, e.status)
	if e.body.Field != "" {
		msg = fmt.Sprintf("%s: %s", e.body.Field, msg)
	}
	return msg
}

// do sends a request and decodes a 2xx JSON answer into out (unless nil).
// It returns the raw body for -o json.
func (c *client) do(method, path string, in any, out any) ([]byte, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return c.send(req, out)
}

func (c *client) send(req *http.Request, out any) ([]byte, error) {
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", req.Method, req.URL.Path, explain(err, strings.TrimSuffix(c.base, "/api/v1")))
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", req.Method, req.URL.Path, err)
	}
	if resp.StatusCode/100 != 2 {
		e := &apiError{status: resp.StatusCode}
		if json.Unmarshal(raw, &e.body) != nil || e.body.Error == "" {
			e.body.Error = strings.TrimSpace(string(raw))
		}
		return nil, e
	}
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			return nil, fmt.Errorf("%s %s: decode answer: %w", req.Method, req.URL.Path, err)
		}
	}
	return raw, nil
}

// printJSON writes an API answer indented.
func printJSON(w io.Writer, raw []byte) error {
	var buf bytes.Buffer
	if len(raw) == 0 {
		raw = []byte("{}")
	}
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		return err
	}
	buf.WriteByte('\n')
	_, err := w.Write(buf.Bytes())
	return err
}

func newTable(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0) }

// parseSize reads a size in bytes with an optional binary suffix: K, M, G,
// T (or KiB, MiB, GiB, TiB). "1G" is 1073741824.
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(strings.ToUpper(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "IB"), "B")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		case 'P':
			mult = 1 << 50
		}
		if mult != 1 {
			t = t[:n-1]
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("size %q: want a number of bytes with an optional K, M, G or T suffix", s)
	}
	return n * mult, nil
}

// humanSize formats bytes with a binary unit.
func humanSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// progress draws a progress bar on w for a transfer of total bytes (or a
// byte counter when total is unknown), at most five times a second.
type progress struct {
	w     io.Writer
	total int64
	done  int64
	start time.Time
	last  time.Time
	label string
}

func (p *progress) add(n int) {
	p.done += int64(n)
	if now := time.Now(); now.Sub(p.last) >= 200*time.Millisecond {
		p.last = now
		p.draw()
	}
}

func (p *progress) draw() {
	rate := float64(p.done) / max(time.Since(p.start).Seconds(), 1e-3)
	if p.total > 0 {
		const width = 30
		frac := min(float64(p.done)/float64(p.total), 1)
		filled := int(frac * width)
		fmt.Fprintf(p.w, "\r%s [%s%s] %5.1f%% %s / %s  %s/s ", p.label,
			strings.Repeat("=", filled), strings.Repeat(" ", width-filled), frac*100,
			humanSize(p.done), humanSize(p.total), humanSize(int64(rate)))
		return
	}
	fmt.Fprintf(p.w, "\r%s %s  %s/s ", p.label, humanSize(p.done), humanSize(int64(rate)))
}

func (p *progress) finish() {
	p.draw()
	fmt.Fprintln(p.w)
}

// progressReader counts what passes through it.
type progressReader struct {
	r io.Reader
	p *progress
}

func (r *progressReader) Read(b []byte) (int, error) {
	n, err := r.r.Read(b)
	r.p.add(n)
	return n, err
}
