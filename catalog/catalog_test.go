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
