package scsi

import "github.com/anvilproject/anvil/internal/rangelock"

// lockBlocks locks n blocks from lba of the logical unit's medium.
func (lu *LogicalUnit) lockBlocks(lba, n uint64, excl bool) rangelock.Held {
	bs := uint64(lu.vol.BlockSize())
	return lu.ranges.Lock(int64(lba*bs), int64(n*bs), excl)
}
