package catalog

import (
	"errors"
	"path/filepath"
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
