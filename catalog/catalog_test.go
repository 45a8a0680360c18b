package catalog

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

func TestCatalogPersistsVolumesAndTargets(t *testing.T) {
	path := filepath.Join(t.TempDir(), "catalog.db")
	c, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	err = c.Update(func(tx *Tx) error {
		if err := tx.CreateVolume(Volume{Name: "db1", SizeBytes: 1 << 30, BlockSize: 512, NAA: "3001"}); err != nil {
			return err
		}
		return tx.CreateTarget(Target{IQN: "iqn.2026-11.io.anvil:db", LUNs: []LUN{{LUN: 3, Volume: "db1"}, {LUN: 0, Volume: "db1"}}})
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	c, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.View(func(tx *Tx) error {
		v, err := tx.Volume("db1")
		if err != nil {
			return err
		}
		if v.SizeBytes != 1<<30 || v.NAA != "3001" {
			t.Errorf("volume after reopen = %+v", v)
		}
		tg, err := tx.Target("iqn.2026-11.io.anvil:db")
		if err != nil {
			return err
		}
		if len(tg.LUNs) != 2 || tg.LUNs[0].LUN != 0 || tg.LUNs[1].LUN != 3 {
			t.Errorf("LUNs not stored sorted: %+v", tg.LUNs)
		}
		by, err := tx.MappedBy("db1")
		if err != nil || len(by) != 1 {
			t.Errorf("MappedBy = %v, %v", by, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestCatalogErrors(t *testing.T) {
	c, err := Open(filepath.Join(t.TempDir(), "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.Update(func(tx *Tx) error { return tx.CreateVolume(Volume{Name: "a"}) })
	if err != nil {
		t.Fatal(err)
	}
	err = c.Update(func(tx *Tx) error { return tx.CreateVolume(Volume{Name: "a"}) })
	if !errors.Is(err, ErrExists) {
		t.Errorf("duplicate create = %v, want ErrExists", err)
	}
	err = c.View(func(tx *Tx) error { _, err := tx.Volume("nope"); return err })
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("missing volume = %v, want ErrNotFound", err)
	}
	err = c.Update(func(tx *Tx) error { return tx.DeleteTarget("nope") })
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("delete missing target = %v, want ErrNotFound", err)
	}
	// A failing transaction leaves nothing behind.
	boom := errors.New("boom")
	err = c.Update(func(tx *Tx) error {
		if err := tx.CreateVolume(Volume{Name: "b"}); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatal(err)
	}
	err = c.View(func(tx *Tx) error { _, err := tx.Volume("b"); return err })
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("rolled-back volume is visible: %v", err)
	}
}

func TestCatalogRefusesNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "catalog.db")
	c, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	c.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keySchema, []byte{0, 0, 0, 0, 0, 0, 0, 99})
	})
	c.Close()
	if _, err := Open(path); err == nil {
		t.Fatal("catalog with schema 99 opened")
	}
}

func TestReservationsFollowTheirVolume(t *testing.T) {
	c, err := Open(filepath.Join(t.TempDir(), "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Update(func(tx *Tx) error { return tx.PutReservation("ghost", []byte("{}")) }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("reservation for a missing volume = %v, want ErrNotFound", err)
	}
	err = c.Update(func(tx *Tx) error {
		if err := tx.CreateVolume(Volume{Name: "v"}); err != nil {
			return err
		}
		return tx.PutReservation("v", []byte(`{"aptpl":true}`))
	})
	if err != nil {
		t.Fatal(err)
	}
	c.View(func(tx *Tx) error {
		if got := string(tx.Reservation("v")); got != `{"aptpl":true}` {
			t.Errorf("reservation = %q", got)
		}
		return nil
	})
	if err := c.Update(func(tx *Tx) error { return tx.DeleteVolume("v") }); err != nil {
		t.Fatal(err)
	}
	c.Update(func(tx *Tx) error {
		if err := tx.CreateVolume(Volume{Name: "v"}); err != nil {
			return err
		}
		if got := tx.Reservation("v"); got != nil {
			t.Errorf("a new volume inherited a deleted one's reservation: %q", got)
		}
		return nil
	})
}

func TestMigrationFromSchemaOne(t *testing.T) {
	path := filepath.Join(t.TempDir(), "catalog.db")
	// A version-1 catalog: volumes and targets buckets only.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error {
		meta, _ := tx.CreateBucket(bucketMeta)
		tx.CreateBucket(bucketVolumes)
		tx.CreateBucket(bucketTargets)
		tx.Bucket(bucketVolumes).Put([]byte("old"), []byte(`{"name":"old","size_bytes":512}`))
		return meta.Put(keySchema, []byte{0, 0, 0, 0, 0, 0, 0, 1})
	})
	db.Close()
	c, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.Update(func(tx *Tx) error {
		if _, err := tx.Volume("old"); err != nil {
			return err
		}
		return tx.PutReservation("old", []byte("{}"))
	})
	if err != nil {
		t.Fatalf("after migration from schema 1: %v", err)
	}
}

// rawVolume reads a volume record as stored, bypassing the catalog.
func rawVolume(t *testing.T, c *Catalog, name string) Volume {
	t.Helper()
	var v Volume
	err := c.db.View(func(tx *bolt.Tx) error {
		return json.Unmarshal(tx.Bucket(bucketVolumes).Get([]byte(name)), &v)
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestVolumePathsAreRelativeToTheDataDir: a data file inside the catalog's
// directory is stored relative to it, so a copy of the directory resolves
// it inside the copy; a block device outside stays absolute.
func TestVolumePathsAreRelativeToTheDataDir(t *testing.T) {
	orig := t.TempDir()
	c, err := Open(filepath.Join(orig, "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	err = c.Update(func(tx *Tx) error {
		if err := tx.CreateVolume(Volume{Name: "img", Path: filepath.Join(orig, "volumes", "img.raw")}); err != nil {
			return err
		}
		return tx.CreateVolume(Volume{Name: "dev", Path: "/dev/sdz"})
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := rawVolume(t, c, "img").Path; got != filepath.Join("volumes", "img.raw") {
		t.Errorf("stored path %q, want volumes/img.raw", got)
	}
	if got := rawVolume(t, c, "dev").Path; got != "/dev/sdz" {
		t.Errorf("stored block device path %q, want /dev/sdz", got)
	}
	c.Close()

	copyDir := t.TempDir()
	b, err := os.ReadFile(filepath.Join(orig, "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(copyDir, "catalog.db"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err = Open(filepath.Join(copyDir, "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.View(func(tx *Tx) error {
		vols, err := tx.Volumes()
		if err != nil || len(vols) != 2 {
			t.Fatalf("Volumes = %v, %v", vols, err)
		}
		if want := filepath.Join(copyDir, "volumes", "img.raw"); vols[1].Path != want {
			t.Errorf("copied catalog resolves %q, want %q", vols[1].Path, want)
		}
		if vols[0].Path != "/dev/sdz" {
			t.Errorf("block device path %q", vols[0].Path)
		}
		return nil
	})
}

// TestMigrationMakesPathsRelative: a schema-2 catalog recorded absolute
// paths; opening it rewrites those inside its directory.
func TestMigrationMakesPathsRelative(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "catalog.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error {
		meta, _ := tx.CreateBucket(bucketMeta)
		vols, _ := tx.CreateBucket(bucketVolumes)
		tx.CreateBucket(bucketTargets)
		tx.CreateBucket(bucketReservations)
		vols.Put([]byte("a"), []byte(`{"name":"a","path":"`+filepath.Join(dir, "volumes", "a.raw")+`"}`))
		vols.Put([]byte("b"), []byte(`{"name":"b","backend":"block","path":"/dev/loop7"}`))
		// Copied from another data directory by an older version.
		vols.Put([]byte("c"), []byte(`{"name":"c","backend":"file","path":"/srv/original/volumes/c.raw"}`))
		return meta.Put(keySchema, []byte{0, 0, 0, 0, 0, 0, 0, 2})
	})
	db.Close()
	c, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := rawVolume(t, c, "a").Path; got != filepath.Join("volumes", "a.raw") {
		t.Errorf("migrated path %q, want volumes/a.raw", got)
	}
	if got := rawVolume(t, c, "b").Path; got != "/dev/loop7" {
		t.Errorf("migrated block device path %q, want /dev/loop7", got)
	}
	if got := rawVolume(t, c, "c").Path; got != filepath.Join("volumes", "c.raw") {
		t.Errorf("image of a copied data directory migrated to %q, want the copy's volumes/c.raw", got)
	}
}

// TestGarbledCatalogIsAnError: damaged pages of catalog.db make Open fail
// with an error naming the file (bbolt panics on some of them), never a
// panic.
func TestGarbledCatalogIsAnError(t *testing.T) {
	const pageSize = 4096
	for page := int64(0); page < 6; page++ {
		dir := t.TempDir()
		path := filepath.Join(dir, "catalog.db")
		c, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		c.Update(func(tx *Tx) error {
			for i := range 50 {
				if err := tx.CreateVolume(Volume{Name: fmt.Sprintf("v%02d", i), Path: "/dev/x"}); err != nil {
					return err
				}
			}
			return nil
		})
		c.Close()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if (page+1)*pageSize > int64(len(b)) {
			break
		}
		for i := page * pageSize; i < (page+1)*pageSize; i++ {
			b[i] = byte(i*131 + 7)
		}
		os.WriteFile(path, b, 0o600)
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Fatalf("page %d garbled: Open panicked: %v", page, r)
				}
			}()
			c, err := Open(path)
			if err == nil {
				// Unused pages may be garbled harmlessly; the records must
				// still all be there.
				c.View(func(tx *Tx) error {
					vols, err := tx.Volumes()
					if err != nil || len(vols) != 50 {
						t.Errorf("page %d garbled: catalog opened but lists %d volumes, %v", page, len(vols), err)
					}
					return nil
				})
				c.Close()
				return
			}
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path) {
				t.Errorf("page %d garbled: %v, want ErrCorrupt naming %s", page, err, path)
			}
		}()
	}
}

func TestSubsystemsPersist(t *testing.T) {
	path := filepath.Join(t.TempDir(), "catalog.db")
	c, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	sub := Subsystem{NQN: "nqn.2026-11.io.anvil:a", Serial: "abc", Hosts: []string{"nqn.2014-08.org.nvmexpress:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427"},
		Namespaces: []Namespace{{NSID: 2, Volume: "v2", NGUID: "00112233445566778899aabbccddeeff", UUID: "1b4e28ba-2fa1-41d2-883f-0016d3cca427"}, {NSID: 1, Volume: "v1"}}}
	err = c.Update(func(tx *Tx) error {
		if err := tx.CreateSubsystem(sub); err != nil {
			return err
		}
		if err := tx.CreateSubsystem(sub); !errors.Is(err, ErrExists) {
			return fmt.Errorf("second create: %v, want ErrExists", err)
		}
		return tx.CreateSubsystem(Subsystem{NQN: "nqn.2026-11.io.anvil:b", AllowAnyHost: true, Namespaces: []Namespace{{NSID: 1, Volume: "v1"}}})
	})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	c, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.Update(func(tx *Tx) error {
		got, err := tx.Subsystem(sub.NQN)
		if err != nil {
			return err
		}
		if len(got.Namespaces) != 2 || got.Namespaces[0].NSID != 1 || got.Namespaces[1].NGUID != sub.Namespaces[0].NGUID || got.Namespaces[1].UUID != sub.Namespaces[0].UUID || len(got.Hosts) != 1 {
			return fmt.Errorf("reopened subsystem = %+v", got)
		}
		if _, err := tx.Subsystem("NQN.2026-11.io.anvil:a"); !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("NQN lookup ignored case: %v", err)
		}
		if by, _ := tx.ExportedBy("v1"); strings.Join(by, ",") != "nqn.2026-11.io.anvil:a,nqn.2026-11.io.anvil:b" {
			return fmt.Errorf("ExportedBy(v1) = %v", by)
		}
		if by, _ := tx.ExportedBy("v3"); len(by) != 0 {
			return fmt.Errorf("ExportedBy(v3) = %v", by)
		}
		if err := tx.DeleteSubsystem("nqn.2026-11.io.anvil:b"); err != nil {
			return err
		}
		if err := tx.DeleteSubsystem("nqn.2026-11.io.anvil:b"); !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("second delete: %v, want ErrNotFound", err)
		}
		subs, err := tx.Subsystems()
		if err != nil || len(subs) != 1 {
			return fmt.Errorf("Subsystems = %v, %v", subs, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestMigrationAddsSubsystems: a schema-3 catalog (no subsystems bucket)
// opens with its volumes and targets intact and takes subsystems.
func TestMigrationAddsSubsystems(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "catalog.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error {
		meta, _ := tx.CreateBucket(bucketMeta)
		vols, _ := tx.CreateBucket(bucketVolumes)
		tgts, _ := tx.CreateBucket(bucketTargets)
		tx.CreateBucket(bucketReservations)
		vols.Put([]byte("a"), []byte(`{"name":"a","path":"volumes/a.raw"}`))
		tgts.Put([]byte("iqn.2026-11.io.anvil:t"), []byte(`{"iqn":"iqn.2026-11.io.anvil:t","luns":[{"lun":0,"volume":"a"}]}`))
		return meta.Put(keySchema, []byte{0, 0, 0, 0, 0, 0, 0, 3})
	})
	db.Close()
	c, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.Update(func(tx *Tx) error {
		if subs, err := tx.Subsystems(); err != nil || len(subs) != 0 {
			return fmt.Errorf("migrated Subsystems = %v, %v", subs, err)
		}
		if _, err := tx.Target("iqn.2026-11.io.anvil:t"); err != nil {
			return err
		}
		if v, err := tx.Volume("a"); err != nil || v.Path != filepath.Join(dir, "volumes", "a.raw") {
			return fmt.Errorf("migrated volume %+v, %v", v, err)
		}
		return tx.CreateSubsystem(Subsystem{NQN: "nqn.2026-11.io.anvil:x", Namespaces: []Namespace{{NSID: 1, Volume: "a"}}})
	})
	if err != nil {
		t.Fatalf("after migration from schema 3: %v", err)
	}
	var version uint64
	c.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta).Get(keySchema)
		version = uint64(b[7])
		return nil
	})
	if version != SchemaVersion {
		t.Fatalf("schema version after migration = %d, want %d", version, SchemaVersion)
	}
}
