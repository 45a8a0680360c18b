package engine

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Files are the paths of one volume's files: Data holds its blocks (for
// BackendBlock, the block device) and Undo its undo FIFO. The engine
// creates, imports and removes them; its callers only keep the names.
type Files struct {
	Data, Undo string
}

// FilesFor is the one naming rule for a volume kept in dir: its data in
// <name>.raw and its undo FIFO in <name>.undo.
func FilesFor(dir, name string) Files {
	return Files{
		Data: filepath.Join(dir, name+".raw"),
		Undo: filepath.Join(dir, name+".undo"),
	}
}

// WithData returns f with its data at path: a block volume's device, or
// the data file a catalog recorded. The undo FIFO stays where it was.
func (f Files) WithData(path string) Files {
	f.Data = path
	return f
}

// Owned lists the files the engine made for a volume of backend b and so
// removes with it: the undo FIFO and, unless b is BackendBlock (whose
// device belongs to the machine), the data file.
func (f Files) Owned(b Backend) []string {
	if b == BackendBlock {
		return []string{f.Undo}
	}
	return []string{f.Undo, f.Data}
}

// Existing returns the first of the files Owned(b) that is already there,
// or "" when a new volume may be created with these names.
func (f Files) Existing(b Backend) string {
	for _, p := range f.Owned(b) {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// Create creates a volume's files (a thin data file of opts.Size, unless
// the backend is a block device, and a fresh undo FIFO) and opens it.
func Create(f Files, opts Options) (*CachedVolume, error) {
	opts.UndoPath = f.Undo
	return Open(f.Data, opts)
}

// OpenFiles opens an existing volume. A missing data file is an error: it
// must not be silently recreated empty.
func OpenFiles(f Files, opts Options) (*CachedVolume, error) {
	if _, err := os.Stat(f.Data); err != nil {
		return nil, fmt.Errorf("data file: %w", err)
	}
	opts.UndoPath = f.Undo
	return Open(f.Data, opts)
}

// Remove deletes the files Owned(b); files already gone are no error.
func Remove(f Files, b Backend) error {
	var errs []error
	for _, p := range f.Owned(b) {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// Import is a data file being written from an image, in a temporary file
// next to its final place, so a failed or abandoned import leaves no volume
// behind.
type Import struct {
	// File is the temporary file to write the image to.
	File  *os.File
	files Files
	done  bool
}

// NewImport starts an import into f.Data. The temporary file is named
// .import-<name>-* in the same directory, so Commit is a rename.
func NewImport(f Files, name string) (*Import, error) {
	tmp, err := os.CreateTemp(filepath.Dir(f.Data), ".import-"+name+"-*")
	if err != nil {
		return nil, fmt.Errorf("start import: %w", err)
	}
	return &Import{File: tmp, files: f}, nil
}

// Commit moves the written (and closed) image to its data file.
func (im *Import) Commit() error {
	if err := os.Rename(im.File.Name(), im.files.Data); err != nil {
		return fmt.Errorf("finish import: %w", err)
	}
	im.done = true
	return nil
}

// Abort closes and removes the temporary file unless Commit succeeded;
// it is safe to defer.
func (im *Import) Abort() {
	if im.done {
		return
	}
	im.File.Close()
	os.Remove(im.File.Name())
}
