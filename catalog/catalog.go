// Package catalog is Anvil's persistent metadata: volumes, iSCSI targets,
// LUN mappings, NVMe subsystems and their namespaces, and access rules, kept in one bbolt file in the data directory.
//
// Every change is one bbolt transaction, so the catalog is never seen half
// updated, and the daemon rebuilds its whole running state from it at start.
// Records are stored as JSON under their natural key (volume name, target
// IQN, subsystem NQN) so that a schema migration can read old records field by field.
package catalog

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// SchemaVersion is the catalog layout this code writes. Open migrates older
// catalogs forward and refuses newer ones.
const SchemaVersion = 4

var (
	bucketMeta    = []byte("meta")
	bucketVolumes = []byte("volumes")
	bucketTargets = []byte("targets")
	// bucketReservations holds each volume's persistent reservation state
	// (SPC-4 APTPL), keyed by volume name. Added in schema version 2.
	bucketReservations = []byte("reservations")
	// bucketSubsystems holds the NVMe subsystems, keyed by NQN. Added in
	// schema version 4.
	bucketSubsystems = []byte("subsystems")

	keySchema = []byte("schema_version")
)

// Errors returned by catalog operations; test with errors.Is.
var (
	ErrNotFound = errors.New("catalog: not found")
	ErrExists   = errors.New("catalog: already exists")
)

// Volume is one volume's persistent record.
type Volume struct {
	Name      string `json:"name"`
	SizeBytes int64  `json:"size_bytes"`
	BlockSize int    `json:"block_size"`
	Thin      bool   `json:"thin"`
	Backend   string `json:"backend"` // "file", "mmap" or "block"
	// Path is the raw image or block device. The catalog stores a path
	// inside its own directory (the data directory) relative to it, so
	// that a copied data directory uses its own files, and hands it out
	// joined to that directory; other paths stay absolute.
	Path       string    `json:"path"`
	WriteCache bool      `json:"write_cache"`
	ReadOnly   bool      `json:"read_only"`
	Serial     string    `json:"serial"`
	NAA        string    `json:"naa"` // hex designator, stable for the volume's life
	Created    time.Time `json:"created"`
}

// LUN maps a logical unit number of a target to a volume.
type LUN struct {
	LUN    uint64 `json:"lun"`
	Volume string `json:"volume"`
}

// ACL says which initiators may log in to a target. An empty initiator list
// admits nobody unless Open is set.
type ACL struct {
	Open       bool     `json:"open"`
	Initiators []string `json:"initiators,omitempty"`
}

// CHAP holds a target's CHAP credentials. Secrets are stored so the target
// can verify responses; the API never returns them.
type CHAP struct {
	User         string `json:"user,omitempty"`
	Secret       string `json:"secret,omitempty"`
	MutualUser   string `json:"mutual_user,omitempty"`
	MutualSecret string `json:"mutual_secret,omitempty"`
}

// Target is one iSCSI target's persistent record.
type Target struct {
	IQN     string    `json:"iqn"`
	Alias   string    `json:"alias,omitempty"`
	LUNs    []LUN     `json:"luns"`
	ACL     ACL       `json:"acl"`
	CHAP    *CHAP     `json:"chap,omitempty"`
	Created time.Time `json:"created"`

	// InitiatorCHAP holds credentials for single initiators, keyed by
	// lower-case initiator name; an initiator listed here logs in with its
	// own credentials instead of the target-wide CHAP.
	InitiatorCHAP map[string]CHAP `json:"initiator_chap,omitempty"`
}

// Namespace exports a volume as one namespace of an NVMe subsystem. NGUID
// and UUID are generated once when the namespace is added and stored, so a
// host sees the same identity after restarts, moves and re-exports.
type Namespace struct {
	NSID   uint32 `json:"nsid"`
	Volume string `json:"volume"`
	NGUID  string `json:"nguid"` // 32 hex digits
	UUID   string `json:"uuid"`  // RFC 9562 text form
}

// Subsystem is one NVMe subsystem's persistent record.
type Subsystem struct {
	NQN    string `json:"nqn"`
	Serial string `json:"serial"`
	// AllowAnyHost admits every host NQN; otherwise only those in Hosts.
	AllowAnyHost bool        `json:"allow_any_host"`
	Hosts        []string    `json:"hosts,omitempty"`
	Namespaces   []Namespace `json:"namespaces"`
	Created      time.Time   `json:"created"`
}

// Catalog is an open catalog file.
type Catalog struct {
	db  *bolt.DB
	dir string // the directory holding the file; volume paths are relative to it
}

// ErrCorrupt: the catalog file is damaged; Open refuses it rather than
// guess at the state it held.
var ErrCorrupt = errors.New("catalog: file is corrupt")

// Open opens or creates the catalog at path and brings its schema up to
// SchemaVersion. A damaged file is refused with ErrCorrupt: bbolt panics on
// some corruption, so Open reads every page once, with the panic turned
// into an error, before anything else uses the file.
func Open(path string) (_ *Catalog, err error) {
	var db *bolt.DB
	defer func() {
		if r := recover(); r != nil {
			if db != nil {
				closeQuietly(db)
			}
			err = fmt.Errorf("open catalog %s: %w: %v", path, ErrCorrupt, r)
		}
	}()
	db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrInvalid) || errors.Is(err, bolt.ErrChecksum) || errors.Is(err, bolt.ErrVersionMismatch) {
			err = fmt.Errorf("%w: %w", ErrCorrupt, err)
		}
		return nil, fmt.Errorf("open catalog %s: %w", path, err)
	}
	if err := db.View(check); err != nil {
		db.Close()
		return nil, fmt.Errorf("open catalog %s: %w: %w", path, ErrCorrupt, err)
	}
	c := &Catalog{db: db, dir: filepath.Dir(path)}
	if err := db.Update(c.migrate); err != nil {
		db.Close()
		return nil, fmt.Errorf("open catalog %s: %w", path, err)
	}
	return c, nil
}

// closeQuietly closes a database that panicked; closing may panic too.
func closeQuietly(db *bolt.DB) {
	defer func() { _ = recover() }()
	db.Close()
}

// check runs bbolt's consistency check and then reads every key and value
// of every bucket, so that a damaged page shows up here and not in the
// middle of the daemon's work.
func check(tx *bolt.Tx) error {
	var errs []error
	for err := range tx.Check() {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
		return b.ForEach(func(k, v []byte) error {
			if v != nil && !bytes.Equal(name, bucketMeta) && !bytes.Equal(name, bucketReservations) && !json.Valid(v) {
				return fmt.Errorf("bucket %s key %q: record is not JSON", name, k)
			}
			return nil
		})
	})
}

// migrations[i] upgrades schema version i to i+1. Version 0 is an empty file.
var migrations = []func(c *Catalog, tx *bolt.Tx) error{
	func(_ *Catalog, tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketVolumes, bucketTargets} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	},
	func(_ *Catalog, tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketReservations)
		return err
	},
	func(c *Catalog, tx *bolt.Tx) error { return relativePaths(tx, c.dir) },
	func(_ *Catalog, tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketSubsystems)
		return err
	},
}

// relativePaths is the migration from schema 2 to 3: volume paths inside
// dir, which older versions stored as the daemon spelt them (absolute, or
// relative to its working directory), become relative to dir. So does a
// file or mmap volume's image at another data directory's
// volumes/<name>.raw, where every older version put it: that catalog was
// copied with its directory, and the copy's image is the one that goes
// with the copy's undo FIFO.
func relativePaths(tx *bolt.Tx, dir string) error {
	vols, err := list[Volume](tx, bucketVolumes)
	if err != nil {
		return err
	}
	for _, v := range vols {
		if v.Path == "" {
			continue
		}
		p, err := filepath.Abs(v.Path)
		if err != nil {
			return fmt.Errorf("volume %q: path %s: %w", v.Name, v.Path, err)
		}
		standard := filepath.Join("volumes", v.Name+".raw")
		if rel, ok := inside(dir, p); ok {
			v.Path = rel
		} else if v.Backend != "block" && strings.HasSuffix(p, string(filepath.Separator)+standard) {
			v.Path = standard
		} else {
			v.Path = p
		}
		if err := put(tx, bucketVolumes, v.Name, v); err != nil {
			return err
		}
	}
	return nil
}

// inside returns p relative to dir if p lies inside dir.
func inside(dir, p string) (string, bool) {
	ad, err := filepath.Abs(dir)
	if err != nil {
		return "", false
	}
	ap, err := filepath.Abs(p)
	if err != nil {
		return "", false
	}
	rel, err := filepath.Rel(ad, ap)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) || filepath.IsAbs(rel) {
		return "", false
	}
	return rel, true
}

// stored is v as the catalog keeps it: a path inside the catalog's
// directory relative to it.
func (t *Tx) stored(v Volume) Volume {
	if v.Path != "" {
		if rel, ok := inside(t.dir, v.Path); ok {
			v.Path = rel
		}
	}
	return v
}

// loaded is a stored volume as callers see it: a relative path joined to
// the catalog's directory.
func (t *Tx) loaded(v Volume) Volume {
	if v.Path != "" && !filepath.IsAbs(v.Path) {
		v.Path = filepath.Join(t.dir, v.Path)
	}
	return v
}

func (c *Catalog) migrate(tx *bolt.Tx) error {
	meta, err := tx.CreateBucketIfNotExists(bucketMeta)
	if err != nil {
		return err
	}
	version := 0
	if b := meta.Get(keySchema); len(b) == 8 {
		version = int(binary.BigEndian.Uint64(b))
	}
	if version > SchemaVersion {
		return fmt.Errorf("catalog schema version %d is newer than this Anvil understands (%d)", version, SchemaVersion)
	}
	for ; version < SchemaVersion; version++ {
		if err := migrations[version](c, tx); err != nil {
			return fmt.Errorf("migrate catalog schema %d to %d: %w", version, version+1, err)
		}
	}
	return meta.Put(keySchema, binary.BigEndian.AppendUint64(nil, uint64(SchemaVersion)))
}

// Close closes the catalog file.
func (c *Catalog) Close() error { return c.db.Close() }

// Tx is a read-write view of the catalog within one transaction.
type Tx struct {
	tx  *bolt.Tx
	dir string
}

// Update runs fn in one read-write transaction: all of its changes land or
// none do.
func (c *Catalog) Update(fn func(*Tx) error) error {
	return c.db.Update(func(tx *bolt.Tx) error { return fn(&Tx{tx, c.dir}) })
}

// View runs fn in a read-only transaction.
func (c *Catalog) View(fn func(*Tx) error) error {
	return c.db.View(func(tx *bolt.Tx) error { return fn(&Tx{tx, c.dir}) })
}

func get[T any](tx *bolt.Tx, bucket []byte, key string) (T, error) {
	var v T
	b := tx.Bucket(bucket).Get([]byte(key))
	if b == nil {
		return v, fmt.Errorf("%s %q: %w", bucket[:len(bucket)-1], key, ErrNotFound)
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return v, fmt.Errorf("decode %s %q: %w", bucket[:len(bucket)-1], key, err)
	}
	return v, nil
}

func list[T any](tx *bolt.Tx, bucket []byte) ([]T, error) {
	var out []T
	err := tx.Bucket(bucket).ForEach(func(k, b []byte) error {
		var v T
		if err := json.Unmarshal(b, &v); err != nil {
			return fmt.Errorf("decode %s %q: %w", bucket[:len(bucket)-1], k, err)
		}
		out = append(out, v)
		return nil
	})
	return out, err
}

func put(tx *bolt.Tx, bucket []byte, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return tx.Bucket(bucket).Put([]byte(key), b)
}

// Volume returns the volume named name.
func (t *Tx) Volume(name string) (Volume, error) {
	v, err := get[Volume](t.tx, bucketVolumes, name)
	return t.loaded(v), err
}

// Volumes returns every volume, sorted by name.
func (t *Tx) Volumes() ([]Volume, error) {
	vols, err := list[Volume](t.tx, bucketVolumes)
	for i := range vols {
		vols[i] = t.loaded(vols[i])
	}
	return vols, err
}

// CreateVolume adds a new volume record; it fails with ErrExists if the name
// is taken.
func (t *Tx) CreateVolume(v Volume) error {
	if t.tx.Bucket(bucketVolumes).Get([]byte(v.Name)) != nil {
		return fmt.Errorf("volume %q: %w", v.Name, ErrExists)
	}
	return put(t.tx, bucketVolumes, v.Name, t.stored(v))
}

// PutVolume stores v, replacing any record of the same name.
func (t *Tx) PutVolume(v Volume) error { return put(t.tx, bucketVolumes, v.Name, t.stored(v)) }

// DeleteVolume removes the volume record and its reservation state.
func (t *Tx) DeleteVolume(name string) error {
	if t.tx.Bucket(bucketVolumes).Get([]byte(name)) == nil {
		return fmt.Errorf("volume %q: %w", name, ErrNotFound)
	}
	if err := t.tx.Bucket(bucketReservations).Delete([]byte(name)); err != nil {
		return err
	}
	return t.tx.Bucket(bucketVolumes).Delete([]byte(name))
}

// Reservation returns the persistent reservation state saved for a volume
// (opaque to the catalog: the SCSI core's JSON), or nil if there is none.
func (t *Tx) Reservation(volume string) []byte {
	if v := t.tx.Bucket(bucketReservations).Get([]byte(volume)); v != nil {
		return append([]byte(nil), v...)
	}
	return nil
}

// PutReservation saves a volume's persistent reservation state; nil or
// empty state deletes it. The volume must exist, so that a late save
// cannot resurrect the state of a deleted volume.
func (t *Tx) PutReservation(volume string, state []byte) error {
	if t.tx.Bucket(bucketVolumes).Get([]byte(volume)) == nil {
		return fmt.Errorf("volume %q: %w", volume, ErrNotFound)
	}
	if len(state) == 0 {
		return t.tx.Bucket(bucketReservations).Delete([]byte(volume))
	}
	return t.tx.Bucket(bucketReservations).Put([]byte(volume), state)
}

// Target returns the target with the given IQN.
func (t *Tx) Target(iqn string) (Target, error) { return get[Target](t.tx, bucketTargets, iqn) }

// Targets returns every target, sorted by IQN.
func (t *Tx) Targets() ([]Target, error) { return list[Target](t.tx, bucketTargets) }

// CreateTarget adds a new target record; it fails with ErrExists if the IQN
// is taken.
func (t *Tx) CreateTarget(tg Target) error {
	if t.tx.Bucket(bucketTargets).Get([]byte(tg.IQN)) != nil {
		return fmt.Errorf("target %q: %w", tg.IQN, ErrExists)
	}
	return t.PutTarget(tg)
}

// PutTarget stores tg, replacing any record with the same IQN. LUNs are kept
// sorted so that listings are stable.
func (t *Tx) PutTarget(tg Target) error {
	sort.Slice(tg.LUNs, func(i, j int) bool { return tg.LUNs[i].LUN < tg.LUNs[j].LUN })
	return put(t.tx, bucketTargets, tg.IQN, tg)
}

// DeleteTarget removes the target record.
func (t *Tx) DeleteTarget(iqn string) error {
	if t.tx.Bucket(bucketTargets).Get([]byte(iqn)) == nil {
		return fmt.Errorf("target %q: %w", iqn, ErrNotFound)
	}
	return t.tx.Bucket(bucketTargets).Delete([]byte(iqn))
}

// Subsystem returns the NVMe subsystem with the given NQN (NQNs are
// case-sensitive).
func (t *Tx) Subsystem(nqn string) (Subsystem, error) {
	return get[Subsystem](t.tx, bucketSubsystems, nqn)
}

// Subsystems returns every NVMe subsystem, sorted by NQN.
func (t *Tx) Subsystems() ([]Subsystem, error) { return list[Subsystem](t.tx, bucketSubsystems) }

// CreateSubsystem adds a new subsystem record; it fails with ErrExists if
// the NQN is taken.
func (t *Tx) CreateSubsystem(s Subsystem) error {
	if t.tx.Bucket(bucketSubsystems).Get([]byte(s.NQN)) != nil {
		return fmt.Errorf("subsystem %q: %w", s.NQN, ErrExists)
	}
	return t.PutSubsystem(s)
}

// PutSubsystem stores s, replacing any record with the same NQN.
// Namespaces are kept sorted by NSID so that listings are stable; the
// caller's slice is left as it was.
func (t *Tx) PutSubsystem(s Subsystem) error {
	s.Namespaces = append([]Namespace(nil), s.Namespaces...)
	sort.Slice(s.Namespaces, func(i, j int) bool { return s.Namespaces[i].NSID < s.Namespaces[j].NSID })
	return put(t.tx, bucketSubsystems, s.NQN, s)
}

// DeleteSubsystem removes the subsystem record.
func (t *Tx) DeleteSubsystem(nqn string) error {
	if t.tx.Bucket(bucketSubsystems).Get([]byte(nqn)) == nil {
		return fmt.Errorf("subsystem %q: %w", nqn, ErrNotFound)
	}
	return t.tx.Bucket(bucketSubsystems).Delete([]byte(nqn))
}

// ExportedBy returns the NQNs of the subsystems that export the volume
// named name as a namespace.
func (t *Tx) ExportedBy(name string) ([]string, error) {
	subs, err := t.Subsystems()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range subs {
		for _, ns := range s.Namespaces {
			if ns.Volume == name {
				out = append(out, s.NQN)
				break
			}
		}
	}
	return out, nil
}

// MappedBy returns the IQNs of the targets that map the volume named name.
func (t *Tx) MappedBy(name string) ([]string, error) {
	targets, err := t.Targets()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, tg := range targets {
		for _, l := range tg.LUNs {
			if l.Volume == name {
				out = append(out, tg.IQN)
				break
			}
		}
	}
	return out, nil
}

// Meta returns a raw value from the meta bucket (nil if unset). It holds
// small daemon-wide settings such as the API token's hash.
func (t *Tx) Meta(key string) []byte {
	if v := t.tx.Bucket(bucketMeta).Get([]byte(key)); v != nil {
		return append([]byte(nil), v...)
	}
	return nil
}

// SetMeta stores a raw value in the meta bucket.
func (t *Tx) SetMeta(key string, value []byte) error {
	if key == string(keySchema) {
		return fmt.Errorf("meta key %q is reserved", key)
	}
	return t.tx.Bucket(bucketMeta).Put([]byte(key), value)
}

// metaDiscoveryCHAP is the meta key of the discovery sessions' CHAP
// credentials (JSON CHAP; absent when discovery needs none).
const metaDiscoveryCHAP = "discovery_chap"

// DiscoveryCHAP returns the CHAP credentials discovery sessions must use,
// or nil when discovery needs none.
func (t *Tx) DiscoveryCHAP() (*CHAP, error) {
	b := t.tx.Bucket(bucketMeta).Get([]byte(metaDiscoveryCHAP))
	if b == nil {
		return nil, nil
	}
	var c CHAP
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("decode discovery CHAP: %w", err)
	}
	return &c, nil
}

// SetDiscoveryCHAP stores the discovery sessions' CHAP credentials; nil
// removes them.
func (t *Tx) SetDiscoveryCHAP(c *CHAP) error {
	if c == nil {
		return t.tx.Bucket(bucketMeta).Delete([]byte(metaDiscoveryCHAP))
	}
	return put(t.tx, bucketMeta, metaDiscoveryCHAP, c)
}
