package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/sightglass-bms/sightglass/agent/buffer"
)

// openBuffer opens the buffer. A damaged file (a disk fault, a power cut
// on a card without power-loss protection) is moved aside, kept for
// forensics and a possible manual recovery, and a new buffer started: an
// agent that refused to start would lose every sample from now on, and a
// crash loop would fill the journal. Saying so loudly is all it can do for
// what the damaged file held.
func openBuffer(path string, opts buffer.Options, log *slog.Logger) (*buffer.Buffer, error) {
	b, err := buffer.Open(path, opts)
	if err == nil || !errors.Is(err, buffer.ErrCorrupt) {
		return b, err
	}
	aside := fmt.Sprintf("%s.damaged-%s", path, time.Now().UTC().Format("20060102T150405Z"))
	if rerr := os.Rename(path, aside); rerr != nil {
		return nil, fmt.Errorf("%w; moving it aside failed too: %w (move or remove %s by hand)", err, rerr, path)
	}
	log.Error("the buffer file was damaged: moved it aside and started a new, empty buffer; samples it held that were not uploaded yet are lost unless recovered from the moved file",
		"damaged", aside, "err", err)
	b, err = buffer.Open(path, opts)
	if err != nil {
		return nil, fmt.Errorf("starting a new buffer after moving the damaged one to %s: %w", aside, err)
	}
	return b, nil
}
