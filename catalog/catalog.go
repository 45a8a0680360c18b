// Package catalog is Anvil's persistent metadata: volumes, targets, LUN
// mappings and access rules, kept in one bbolt file in the data directory.
//
// Every change is one bbolt transaction, so the catalog is never seen half
// updated, and the daemon rebuilds its whole running state from it at start.
// Records are stored as JSON under their natural key (volume name, target
// IQN) so that a schema migration can read old records field by field.
package catalog

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

// SchemaVersion is the catalog layout this code writes. Open migrates older
// catalogs forward and refuses newer ones.
const SchemaVersion = 2

var (
	bucketMeta    = []byte("meta")
	bucketVolumes = []byte("volumes")
	bucketTargets = []byte("targets")
	// bucketReservations holds each volume's persistent reservation state
	// (SPC-4 APTPL), keyed by volume name. Added in schema version 2.
	bucketReservations = []byte("reservations")

	keySchema = []byte("schema_version")
)

// Errors returned by catalog operations; test with errors.Is.
var (
	ErrNotFound = errors.New("catalog: not found")
	ErrExists   = errors.New("catalog: already exists")
)

// Volume is one volume's persistent record.
type Volume struct {
	Name       string    `json:"name"`
	SizeBytes  int64     `json:"size_bytes"`
	BlockSize  int       `json:"block_size"`
	Thin       bool      `json:"thin"`
	Backend    string    `json:"backend"` // "file", "mmap" or "block"
	Path       string    `json:"path"`    // raw image or block device
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

// Catalog is an open catalog file.
type Catalog struct {
	db *bolt.DB
}

// Open opens or creates the catalog at path and brings its schema up to
// SchemaVersion.
func Open(path string) (*Catalog, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open catalog %s: %w", path, err)
	}
	c := &Catalog{db: db}
	if err := db.Update(c.migrate); err != nil {
		db.Close()
		return nil, fmt.Errorf("open catalog %s: %w", path, err)
	}
	return c, nil
}

// migrations[i] upgrades schema version i to i+1. Version 0 is an empty file.
var migrations = []func(tx *bolt.Tx) error{
	func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketVolumes, bucketTargets} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	},
	func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketReservations)
		return err
	},
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
		if err := migrations[version](tx); err != nil {
			return fmt.Errorf("migrate catalog schema %d to %d: %w", version, version+1, err)
		}
	}
	return meta.Put(keySchema, binary.BigEndian.AppendUint64(nil, uint64(SchemaVersion)))
}

// Close closes the catalog file.
func (c *Catalog) Close() error { return c.db.Close() }

// Tx is a read-write view of the catalog within one transaction.
type Tx struct{ tx *bolt.Tx }

// Update runs fn in one read-write transaction: all of its changes land or
// none do.
func (c *Catalog) Update(fn func(*Tx) error) error {
	return c.db.Update(func(tx *bolt.Tx) error { return fn(&Tx{tx}) })
}

// View runs fn in a read-only transaction.
func (c *Catalog) View(fn func(*Tx) error) error {
	return c.db.View(func(tx *bolt.Tx) error { return fn(&Tx{tx}) })
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
func (t *Tx) Volume(name string) (Volume, error) { return get[Volume](t.tx, bucketVolumes, name) }

// Volumes returns every volume, sorted by name.
func (t *Tx) Volumes() ([]Volume, error) { return list[Volume](t.tx, bucketVolumes) }

// CreateVolume adds a new volume record; it fails with ErrExists if the name
// is taken.
func (t *Tx) CreateVolume(v Volume) error {
	if t.tx.Bucket(bucketVolumes).Get([]byte(v.Name)) != nil {
		return fmt.Errorf("volume %q: %w", v.Name, ErrExists)
	}
	return put(t.tx, bucketVolumes, v.Name, v)
}

// PutVolume stores v, replacing any record of the same name.
func (t *Tx) PutVolume(v Volume) error { return put(t.tx, bucketVolumes, v.Name, v) }

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
