package buffer

import "syscall"

// allocated returns the bytes the file at path occupies on disk: its
// allocated blocks, not its length, since bbolt grows a file by truncating
// it, which leaves holes that take no space. A missing file holds none.
func allocated(path string) (int64, bool) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, false
	}
	return st.Blocks * 512, true // st_blocks counts 512-byte units whatever the block size
}

// fsFree returns the bytes free on the file system holding path. Bfree,
// not Bavail: the blocks reserved for root count, so that a bound built on
// it stays an upper bound when the agent runs as root.
func fsFree(path string) (int64, bool) {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(path, &fs); err != nil {
		return 0, false
	}
	return int64(fs.Bfree) * fs.Bsize, true
}
