//go:build !linux

package buffer

// allocated and fsFree report nothing outside Linux (the agent's only
// platform): the buffer then puts no bound on what dropping could free,
// and a full disk drops until the read fits or nothing is left.
func allocated(string) (int64, bool) { return 0, false }

func fsFree(string) (int64, bool) { return 0, false }
