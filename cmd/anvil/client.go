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
	fs.StringVar(&f.dataDir, "data-dir", "", "daemon data directory holding api.token (env ANVIL_DATA_DIR, else ./anvil-data, then /var/lib/anvil)")
	fs.StringVarP(&f.output, "output", "o", "table", "output format: table or json")
	fs.StringVar(&f.caCert, "ca-cert", "", "PEM CA certificate to verify an https API with")
	fs.BoolVar(&f.insecure, "insecure-skip-verify", false, "do not verify the https API's certificate")
}

// client is a REST API client.
type client struct {
	base   string
	token  string
	http   *http.Client
	output string
}

// baseURL turns an address setting into the API's base URL. A listen
// address on all interfaces (0.0.0.0, [::] or an empty host) is reached
// over loopback.
func baseURL(addr string) (string, error) {
	if strings.Contains(addr, "://") {
		u, err := url.Parse(addr)
		if err != nil {
			return "", fmt.Errorf("API address %q: %w", addr, err)
		}
		return strings.TrimSuffix(u.String(), "/"), nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("API address %q: %w", addr, err)
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port), nil
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
	base, err := baseURL(addr)
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
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if f.caCert != "" || f.insecure {
		cfg := &tls.Config{InsecureSkipVerify: f.insecure}
		if f.caCert != "" {
			pem, err := os.ReadFile(f.caCert)
			if err != nil {
				return nil, fmt.Errorf("--ca-cert: %w", err)
			}
			cfg.RootCAs = x509.NewCertPool()
			if !cfg.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("--ca-cert %s: no PEM certificates", f.caCert)
			}
		}
		tr.TLSClientConfig = cfg
	}
	return &client{base: base + "/api/v1", token: token, http: &http.Client{Transport: tr}, output: f.output}, nil
}

func (f *clientFlags) tokenFromDataDir() (string, error) {
	dirs := []string{f.dataDir}
	if f.dataDir == "" {
		dirs = []string{os.Getenv("ANVIL_DATA_DIR"), "./anvil-data", "/var/lib/anvil"}
	}
	for _, d := range dirs {
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
		return nil, fmt.Errorf("%s %s: %w", req.Method, req.URL.Path, err)
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
