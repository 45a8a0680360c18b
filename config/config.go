// Package config loads Anvil's daemon settings through viper: command-line
// flags over ANVIL_* environment variables over anvil.yaml over the embedded
// defaults. With no configuration at all the daemon starts on the defaults.
//
// Every setting is declared once in Settings; the flag, the environment
// variable and the YAML key are all derived from that one entry, so the
// three can never drift apart.
package config

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// Setting declares one configuration value.
type Setting struct {
	// Key is the dotted anvil.yaml key, e.g. "iscsi.listen".
	Key string
	// Flag is the command-line flag name, e.g. "iscsi-listen".
	Flag string
	// Default is the embedded default; its type fixes the setting's type.
	Default any
	// Usage is the one-line help text.
	Usage string
	// Secret hides the value when the configuration is printed.
	Secret bool
}

// Env is the environment variable that sets s: ANVIL_ plus the key in upper
// case with dots as underscores.
func (s Setting) Env() string {
	return "ANVIL_" + strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(s.Key))
}

// Settings lists every daemon setting.
var Settings = []Setting{
	{Key: "data_dir", Flag: "data-dir", Default: "./anvil-data", Usage: "directory holding catalog.db and the volumes' data files"},
	{Key: "demo", Flag: "demo", Default: true, Usage: "on an empty data directory, create a 1 GiB thin demo volume exported as iqn.2026-11.io.anvil:demo (--no-demo to skip)"},
	{Key: "iscsi.listen", Flag: "iscsi-listen", Default: "0.0.0.0:3260", Usage: "iSCSI portal address (host:port)"},
	{Key: "iscsi.portal_group_tag", Flag: "iscsi-portal-group-tag", Default: 1, Usage: "target portal group tag of the portal"},
	{Key: "iscsi.max_recv_data_segment_length", Flag: "iscsi-max-recv-data-segment-length", Default: 262144, Usage: "largest data segment the target accepts in one PDU (bytes)"},
	{Key: "iscsi.max_burst_length", Flag: "iscsi-max-burst-length", Default: 1048576, Usage: "largest solicited data sequence offered in negotiation (bytes)"},
	{Key: "iscsi.first_burst_length", Flag: "iscsi-first-burst-length", Default: 262144, Usage: "largest unsolicited data offered in negotiation (bytes)"},
	{Key: "iscsi.max_outstanding_r2t", Flag: "iscsi-max-outstanding-r2t", Default: 16, Usage: "R2Ts a task may have outstanding at once"},
	{Key: "iscsi.nop_interval", Flag: "iscsi-nop-interval", Default: 30 * time.Second, Usage: "idle time before the target pings an initiator with NOP-In (0 disables)"},
	{Key: "iscsi.nop_timeout", Flag: "iscsi-nop-timeout", Default: 30 * time.Second, Usage: "how long an initiator may take to answer a NOP-In ping"},
	{Key: "iscsi.max_connections", Flag: "iscsi-max-connections", Default: 1024, Usage: "TCP connections the portal keeps at once, counting those still logging in; more are closed on accept"},
	{Key: "iscsi.max_connections_per_address", Flag: "iscsi-max-connections-per-address", Default: 64, Usage: "connections the portal keeps at once from one initiator IP address"},
	{Key: "iscsi.data_out_budget", Flag: "iscsi-data-out-budget", Default: 0, Usage: "memory all sessions together may hold for write data not yet received, in bytes; past it only hosts below an equal share get in, up to a quarter more, and other writes get TASK SET FULL (0: a quarter of cache.size; at least 32 MiB)"},
	{Key: "iscsi.data_out_timeout", Flag: "iscsi-data-out-timeout", Default: 30 * time.Second, Usage: "how long a write may wait for its Data-Out without progress before the connection is dropped"},
	{Key: "nvme.enabled", Flag: "nvme", Default: true, Usage: "serve NVMe/TCP (--nvme=false turns both NVMe listeners off)"},
	{Key: "nvme.listen", Flag: "nvme-listen", Default: "0.0.0.0:4420", Usage: "NVMe/TCP I/O (and discovery) controller address (host:port)"},
	{Key: "nvme.discovery_listen", Flag: "nvme-discovery-listen", Default: "0.0.0.0:8009", Usage: "NVMe/TCP discovery controller address (host:port; empty: none)"},
	{Key: "nvme.in_capsule_data", Flag: "nvme-in-capsule-data", Default: 8192, Usage: "in-capsule data an I/O queue accepts per command (bytes, a multiple of 16; the admin queue always takes 8192)"},
	{Key: "nvme.max_io_queues", Flag: "nvme-max-io-queues", Default: 8, Usage: "I/O queues a controller may have (Number of Queues feature)"},
	{Key: "nvme.max_queue_entries", Flag: "nvme-max-queue-entries", Default: 128, Usage: "entries of a submission queue (MQES+1); Connect asking for more is refused"},
	{Key: "nvme.max_connections", Flag: "nvme-max-connections", Default: 1024, Usage: "NVMe/TCP connections (queues) kept at once on all NVMe listeners; more are closed on accept"},
	{Key: "nvme.max_connections_per_address", Flag: "nvme-max-connections-per-address", Default: 128, Usage: "NVMe/TCP connections kept at once from one host IP address"},
	{Key: "cache.size", Flag: "cache-size", Default: 0, Usage: "buffer cache memory budget shared by all volumes, in bytes (0: the smaller of 1 GiB and a quarter of RAM)"},
	{Key: "cache.dirty_limit", Flag: "cache-dirty-limit", Default: 0, Usage: "bound on dirty plus in-flight cache bytes before writers wait for the flusher (0: half of cache.size)"},
	{Key: "engine.flush_interval", Flag: "engine-flush-interval", Default: 5 * time.Second, Usage: "how often the flusher commits an open epoch of writes"},
	{Key: "engine.undo_size", Flag: "engine-undo-size", Default: 256 << 20, Usage: "size of a new volume's undo FIFO in bytes; bounds an epoch and the atomic write size"},
	{Key: "volume.default_backend", Flag: "volume-default-backend", Default: "file", Usage: "backend of new volumes that name none: file (pread/pwrite) or mmap"},
	{Key: "volume.space_warn_percent", Flag: "volume-space-warn-percent", Default: 90, Usage: "percent of the data directory's file system in use at which initiators of thin volumes get THIN PROVISIONING SOFT THRESHOLD REACHED, once per crossing (0 disables)"},
	{Key: "volume.import_dirs", Flag: "volume-import-dirs", Default: []string{}, Usage: "directories whose files POST /volumes/import may read by path, comma-separated (empty: none)"},
	{Key: "volume.block_devices", Flag: "volume-block-devices", Default: []string{}, Usage: "block devices (paths or globs, comma-separated) that block volumes and path imports may use (empty: none)"},
	{Key: "api.listen", Flag: "api-listen", Default: "0.0.0.0:8080", Usage: "REST API and web UI address (host:port)"},
	{Key: "api.token", Flag: "api-token", Default: "", Usage: "bearer token the REST API requires (default: DATA_DIR/api.token, generated on first start)", Secret: true},
	{Key: "api.tls", Flag: "api-tls", Default: "auto", Usage: "serve the API over HTTPS: auto (HTTPS unless api.listen is a loopback address), on, or off (plain HTTP); without api.tls_cert a self-signed DATA_DIR/api.crt is generated"},
	{Key: "api.tls_cert", Flag: "api-tls-cert", Default: "", Usage: "PEM certificate file; with api.tls_key the API and UI are served over HTTPS with it"},
	{Key: "api.tls_key", Flag: "api-tls-key", Default: "", Usage: "PEM private key file for api.tls_cert"},
	{Key: "log.level", Flag: "log-level", Default: "info", Usage: "log level: debug, info, warn or error"},
	{Key: "log.format", Flag: "log-format", Default: "text", Usage: "log format: text or json"},
	{Key: "shutdown_timeout", Flag: "shutdown-timeout", Default: 30 * time.Second, Usage: "how long SIGTERM waits for in-flight commands before aborting them"},
}

// DefaultFiles are the configuration files read, first found wins, when
// --config is not given.
var DefaultFiles = []string{"anvil.yaml", "/etc/anvil/anvil.yaml"}

// Config is the effective configuration.
type Config struct {
	DataDir         string        `mapstructure:"data_dir"`
	Demo            bool          `mapstructure:"demo"`
	ISCSI           ISCSI         `mapstructure:"iscsi"`
	NVMe            NVMe          `mapstructure:"nvme"`
	API             API           `mapstructure:"api"`
	Log             Log           `mapstructure:"log"`
	ShutdownTimeout time.Duration `mapstructure:"shutdown_timeout"`
	Cache           Cache         `mapstructure:"cache"`
	Engine          Engine        `mapstructure:"engine"`
	Volume          Volume        `mapstructure:"volume"`
}

// Cache holds the shared buffer cache's settings.
type Cache struct {
	Size       int64 `mapstructure:"size"`
	DirtyLimit int64 `mapstructure:"dirty_limit"`
}

// Engine holds the I/O engine's settings.
type Engine struct {
	FlushInterval time.Duration `mapstructure:"flush_interval"`
	UndoSize      int64         `mapstructure:"undo_size"`
}

// Volume holds defaults for new volumes.
type Volume struct {
	DefaultBackend   string   `mapstructure:"default_backend"`
	SpaceWarnPercent int      `mapstructure:"space_warn_percent"`
	ImportDirs       []string `mapstructure:"import_dirs"`
	BlockDevices     []string `mapstructure:"block_devices"`
}

// ISCSI holds the iSCSI portal's settings.
type ISCSI struct {
	Listen                   string        `mapstructure:"listen"`
	PortalGroupTag           int           `mapstructure:"portal_group_tag"`
	MaxRecvDataSegmentLength int           `mapstructure:"max_recv_data_segment_length"`
	MaxBurstLength           int           `mapstructure:"max_burst_length"`
	FirstBurstLength         int           `mapstructure:"first_burst_length"`
	MaxOutstandingR2T        int           `mapstructure:"max_outstanding_r2t"`
	NopInterval              time.Duration `mapstructure:"nop_interval"`
	NopTimeout               time.Duration `mapstructure:"nop_timeout"`
	MaxConnections           int           `mapstructure:"max_connections"`
	MaxConnectionsPerAddress int           `mapstructure:"max_connections_per_address"`
	DataOutBudget            int64         `mapstructure:"data_out_budget"`
	DataOutTimeout           time.Duration `mapstructure:"data_out_timeout"`
}

// NVMe holds the NVMe/TCP front end's settings.
type NVMe struct {
	Enabled                  bool   `mapstructure:"enabled"`
	Listen                   string `mapstructure:"listen"`
	DiscoveryListen          string `mapstructure:"discovery_listen"`
	InCapsuleData            int    `mapstructure:"in_capsule_data"`
	MaxIOQueues              int    `mapstructure:"max_io_queues"`
	MaxQueueEntries          int    `mapstructure:"max_queue_entries"`
	MaxConnections           int    `mapstructure:"max_connections"`
	MaxConnectionsPerAddress int    `mapstructure:"max_connections_per_address"`
}

// API holds the REST API's settings.
type API struct {
	Listen  string `mapstructure:"listen"`
	Token   string `mapstructure:"token"`
	TLS     string `mapstructure:"tls"`
	TLSCert string `mapstructure:"tls_cert"`
	TLSKey  string `mapstructure:"tls_key"`
}

// Log holds the logger's settings.
type Log struct {
	Level  string `mapstructure:"level"`
	Format string `mapstructure:"format"`
}

// AddFlags declares every setting's flag on fs, plus --config and the
// --no-demo shorthand.
func AddFlags(fs *pflag.FlagSet) {
	fs.String("config", "", "configuration file (default: ./anvil.yaml, then /etc/anvil/anvil.yaml, if present)")
	for _, s := range Settings {
		usage := fmt.Sprintf("%s (env %s)", s.Usage, s.Env())
		switch d := s.Default.(type) {
		case string:
			fs.String(s.Flag, d, usage)
		case bool:
			fs.Bool(s.Flag, d, usage)
		case int:
			fs.Int(s.Flag, d, usage)
		case time.Duration:
			fs.Duration(s.Flag, d, usage)
		case []string:
			fs.StringSlice(s.Flag, d, usage)
		default:
			panic(fmt.Sprintf("config: setting %s has unsupported default type %T", s.Key, d))
		}
	}
	fs.Bool("no-demo", false, "do not create the demo volume (same as --demo=false)")
}

// Load builds the effective configuration from fs (already parsed), the
// environment, the configuration file and the defaults. The returned viper
// instance can say where each value came from.
func Load(fs *pflag.FlagSet) (*Config, *viper.Viper, error) {
	v := viper.New()
	for _, s := range Settings {
		v.SetDefault(s.Key, s.Default)
		if err := v.BindEnv(s.Key, s.Env()); err != nil {
			return nil, nil, err
		}
		if f := fs.Lookup(s.Flag); f != nil {
			if err := v.BindPFlag(s.Key, f); err != nil {
				return nil, nil, err
			}
		}
	}
	if f := fs.Lookup("no-demo"); f != nil && f.Changed && f.Value.String() == "true" {
		v.Set("demo", false)
	}

	file, _ := fs.GetString("config")
	if file == "" {
		// Look only for the exact names: viper's own search also accepts
		// an extensionless "anvil", which is the binary itself when the
		// daemon is started from the directory that holds it.
		for _, p := range DefaultFiles {
			if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
				file = p
				break
			}
		}
	}
	if file != "" {
		v.SetConfigFile(file)
		if err := v.ReadInConfig(); err != nil {
			return nil, nil, fmt.Errorf("read configuration: %w", err)
		}
	}

	var c Config
	if err := v.Unmarshal(&c); err != nil {
		return nil, nil, fmt.Errorf("decode configuration: %w", err)
	}
	if err := c.validate(); err != nil {
		return nil, nil, err
	}
	return &c, v, nil
}

// validate rejects settings the daemon could not run with, naming the key.
func (c *Config) validate() error {
	if c.DataDir == "" {
		return errors.New("config: data_dir must not be empty")
	}
	if c.ISCSI.PortalGroupTag < 1 || c.ISCSI.PortalGroupTag > 65535 {
		return fmt.Errorf("config: iscsi.portal_group_tag %d: must be 1..65535", c.ISCSI.PortalGroupTag)
	}
	if n := c.ISCSI.MaxRecvDataSegmentLength; n < 512 || n > 1<<24-1 {
		return fmt.Errorf("config: iscsi.max_recv_data_segment_length %d: must be 512..16777215 (RFC 7143)", n)
	}
	if n := c.ISCSI.MaxBurstLength; n < 512 || n > 1<<24-1 {
		return fmt.Errorf("config: iscsi.max_burst_length %d: must be 512..16777215 (RFC 7143)", n)
	}
	if n := c.ISCSI.FirstBurstLength; n < 512 || n > c.ISCSI.MaxBurstLength {
		return fmt.Errorf("config: iscsi.first_burst_length %d: must be 512..max_burst_length", n)
	}
	if n := c.ISCSI.MaxOutstandingR2T; n < 1 || n > 65535 {
		return fmt.Errorf("config: iscsi.max_outstanding_r2t %d: must be 1..65535", n)
	}
	if n := c.ISCSI.MaxConnections; n < 1 {
		return fmt.Errorf("config: iscsi.max_connections %d: must be at least 1", n)
	}
	if n := c.ISCSI.MaxConnectionsPerAddress; n < 1 || n > c.ISCSI.MaxConnections {
		return fmt.Errorf("config: iscsi.max_connections_per_address %d: must be 1..max_connections", n)
	}
	if n := c.ISCSI.DataOutBudget; n != 0 && n < 32<<20 {
		return fmt.Errorf("config: iscsi.data_out_budget %d: must be 0 (automatic) or at least 32 MiB (the largest write)", n)
	}
	if d := c.ISCSI.DataOutTimeout; d < 100*time.Millisecond {
		return fmt.Errorf("config: iscsi.data_out_timeout %s: must be at least 100ms", d)
	}
	if err := c.NVMe.validate(); err != nil {
		return err
	}
	if (c.API.TLSCert == "") != (c.API.TLSKey == "") {
		return errors.New("config: api.tls_cert and api.tls_key must be set together")
	}
	switch c.API.TLS {
	case "auto", "on", "off":
	// A YAML boolean (tls: false) reaches here as "0" or "1", decoded
	// weakly into the string.
	case "true", "1":
		c.API.TLS = "on"
	case "false", "0":
		c.API.TLS = "off"
	default:
		return fmt.Errorf("config: api.tls %q: must be auto, on or off", c.API.TLS)
	}
	if c.API.TLS == "off" && c.API.TLSCert != "" {
		return errors.New("config: api.tls is off but api.tls_cert is set")
	}
	if c.Cache.Size != 0 && c.Cache.Size < 16<<20 {
		return fmt.Errorf("config: cache.size %d: must be 0 (automatic) or at least 16 MiB", c.Cache.Size)
	}
	if c.Cache.DirtyLimit < 0 || (c.Cache.Size != 0 && c.Cache.DirtyLimit > c.Cache.Size) {
		return fmt.Errorf("config: cache.dirty_limit %d: must be 0 (automatic) or at most cache.size", c.Cache.DirtyLimit)
	}
	if c.Engine.FlushInterval < 10*time.Millisecond {
		return fmt.Errorf("config: engine.flush_interval %s: must be at least 10ms", c.Engine.FlushInterval)
	}
	if c.Engine.UndoSize < 1<<20 {
		return fmt.Errorf("config: engine.undo_size %d: must be at least 1 MiB", c.Engine.UndoSize)
	}
	if n := c.Volume.SpaceWarnPercent; n < 0 || n > 100 {
		return fmt.Errorf("config: volume.space_warn_percent %d: must be 0..100", n)
	}
	switch c.Volume.DefaultBackend {
	case "file", "mmap":
	default:
		return fmt.Errorf("config: volume.default_backend %q: must be file or mmap", c.Volume.DefaultBackend)
	}
	for _, d := range c.Volume.ImportDirs {
		if !strings.HasPrefix(d, "/") {
			return fmt.Errorf("config: volume.import_dirs entry %q: must be an absolute directory", d)
		}
	}
	for _, d := range c.Volume.BlockDevices {
		if !strings.HasPrefix(d, "/") {
			return fmt.Errorf("config: volume.block_devices entry %q: must be an absolute path or glob", d)
		}
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("config: log.level %q: must be debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		return fmt.Errorf("config: log.format %q: must be text or json", c.Log.Format)
	}
	return nil
}

// Source says where the effective value of key came from: "flag", "env",
// "file" or "default".
func Source(v *viper.Viper, fs *pflag.FlagSet, key string) string {
	for _, s := range Settings {
		if s.Key != key {
			continue
		}
		if f := fs.Lookup(s.Flag); f != nil && f.Changed {
			return "flag"
		}
		if key == "demo" {
			if f := fs.Lookup("no-demo"); f != nil && f.Changed {
				return "flag"
			}
		}
		if _, ok := os.LookupEnv(s.Env()); ok {
			return "env"
		}
		if v.InConfig(key) {
			return "file"
		}
	}
	return "default"
}

// validate checks the NVMe/TCP settings, naming the key, whether or not
// NVMe/TCP is enabled: a typo should not wait for the day it is turned on.
func (n *NVMe) validate() error {
	if n.Enabled && n.Listen == "" {
		return errors.New("config: nvme.listen must not be empty while nvme.enabled is true")
	}
	if n.Enabled && n.Listen != "" && n.Listen == n.DiscoveryListen {
		return fmt.Errorf("config: nvme.discovery_listen %q: must differ from nvme.listen (the I/O port serves discovery too)", n.DiscoveryListen)
	}
	// IOCCSZ counts 16-byte units including the 64-byte command; the
	// upper bound keeps one queue's buffers (entries x size) modest.
	if v := n.InCapsuleData; v < 0 || v%16 != 0 || v > 1<<20 {
		return fmt.Errorf("config: nvme.in_capsule_data %d: must be 0..1048576 and a multiple of 16", v)
	}
	if v := n.MaxIOQueues; v < 1 || v > 65535 {
		return fmt.Errorf("config: nvme.max_io_queues %d: must be 1..65535", v)
	}
	// MQES is a 0's based 16-bit field and the spec wants at least 2 entries.
	if v := n.MaxQueueEntries; v < 2 || v > 65536 {
		return fmt.Errorf("config: nvme.max_queue_entries %d: must be 2..65536", v)
	}
	if v := n.MaxConnections; v < 1 {
		return fmt.Errorf("config: nvme.max_connections %d: must be at least 1", v)
	}
	if v := n.MaxConnectionsPerAddress; v < 1 || v > n.MaxConnections {
		return fmt.Errorf("config: nvme.max_connections_per_address %d: must be 1..max_connections", v)
	}
	return nil
}
