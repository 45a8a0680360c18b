package engine

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestFilesFor pins the on-disk names the catalog and existing data
// directories rely on.
func TestFilesFor(t *testing.T) {
	f := FilesFor("/d/volumes", "db1")
	if f.Data != "/d/volumes/db1.raw" || f.Undo != "/d/volumes/db1.undo" {
		t.Errorf("FilesFor: %+v", f)
	}
	if g := f.WithData("/dev/sdz"); g.Data != "/dev/sdz" || g.Undo != f.Undo {
		t.Errorf("WithData: %+v", g)
	}
}

// TestCreateRemove: Create makes the data file and the undo FIFO under the
// names given, Remove deletes both, and for a block volume leaves the
// device alone.
func TestCreateRemove(t *testing.T) {
	dir := t.TempDir()
	f := FilesFor(dir, "v")
	if p := f.Existing(BackendFile); p != "" {
		t.Fatalf("Existing before create: %s", p)
	}
	v, err := Create(f, Options{Name: "v", Size: 1 << 20, UndoSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{f.Data, f.Undo} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("after Create: %v", err)
		}
	}
	if p := f.Existing(BackendFile); p == "" {
		t.Error("Existing after create found nothing")
	}
	v, err = OpenFiles(f, Options{Name: "v"})
	if err != nil {
		t.Fatalf("OpenFiles: %v", err)
	}
	v.Close()
	// Pretend the data file is a block device: only the undo FIFO goes.
	if err := Remove(f, BackendBlock); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(f.Undo); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("undo FIFO after Remove: %v", err)
	}
	if _, err := os.Stat(f.Data); err != nil {
		t.Errorf("block Remove took the device: %v", err)
	}
	if err := Remove(f, BackendFile); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(f.Data); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("data file after Remove: %v", err)
	}
	if _, err := OpenFiles(f, Options{Name: "v"}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("OpenFiles of a missing volume: %v, want ErrNotExist and no new file", err)
	}
	if _, err := os.Stat(f.Data); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("OpenFiles recreated the data file: %v", err)
	}
}

// TestImport: an aborted import leaves nothing; a committed one is the
// data file.
func TestImport(t *testing.T) {
	dir := t.TempDir()
	f := FilesFor(dir, "img")
	im, err := NewImport(f, "img")
	if err != nil {
		t.Fatal(err)
	}
	im.Abort()
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("aborted import left %v", ents)
	}
	im, err = NewImport(f, "img")
	if err != nil {
		t.Fatal(err)
	}
	defer im.Abort()
	if _, err := im.File.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	im.File.Close()
	if err := im.Commit(); err != nil {
		t.Fatal(err)
	}
	im.Abort() // after Commit: a no-op
	b, err := os.ReadFile(f.Data)
	if err != nil || string(b) != "hello" {
		t.Errorf("imported data: %q %v", b, err)
	}
	if ents, _ := filepath.Glob(filepath.Join(dir, ".import-*")); len(ents) != 0 {
		t.Errorf("temporary files left: %v", ents)
	}
}
