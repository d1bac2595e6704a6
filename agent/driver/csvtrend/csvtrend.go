// Package csvtrend is the driver for trend logs a BMS exports as CSV files,
// for sites that cannot be polled live. It watches a folder (or reads one
// file), turns each file's rows into samples and, once the agent has
// buffered them, moves the file aside so it is never read twice. It never
// changes a source file's bytes: files are only read and moved.
//
// Each Read consumes the oldest (by name) settled file not yet read and
// returns its samples for the points asked for. Commit then moves every
// file read since the last Commit to processed_dir; a crash in between
// re-reads them, which is why the two are separate. A file that cannot be
// parsed as a whole goes to failed_dir at once so it never blocks the
// files behind it. See README.md for the settings and the rule that names
// a column's point.
package csvtrend

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v4"

	agentconfig "github.com/sightglass-bms/sightglass/agent/config"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// Name is the driver's name in a device's `driver:` key.
const Name = "csvtrend"

// SampleConfig is an example device configuration, for documentation and
// `config` commands that print one.
//
//go:embed sample.yaml
var SampleConfig string

// Info describes the driver to the registry.
func Info() driver.Info {
	return driver.Info{Name: Name, New: New}
}

// Compile-time checks that the driver offers what the agent looks for.
var (
	_ driver.Driver     = (*Driver)(nil)
	_ driver.Discoverer = (*Driver)(nil)
	_ driver.Committer  = (*Driver)(nil)
)

// Settings are a csvtrend device's settings. Zero values mean the default
// given on each field.
type Settings struct {
	// Path is a directory to watch or a single file to read. Required.
	Path string `yaml:"path"`
	// Pattern selects the files of a directory (filepath.Match syntax,
	// matched against the base name). Default "*.csv".
	Pattern string `yaml:"pattern"`
	// Timezone is the IANA zone of timestamps written without an offset,
	// and the zone whose abbreviations (CST, CDT) timestamps may carry.
	// Default "UTC".
	Timezone string `yaml:"timezone"`
	// ProcessedDir receives files once their samples are buffered.
	// Default "<dir>/processed", where <dir> is Path or, for a file, its
	// directory. A relative path is relative to <dir>.
	ProcessedDir string `yaml:"processed_dir"`
	// FailedDir receives files that cannot be parsed. Default
	// "<dir>/failed"; relative to <dir> like ProcessedDir.
	FailedDir string `yaml:"failed_dir"`
	// States maps state texts to numbers, over the built-in On/Off,
	// True/False, Occupied/Unoccupied, Active/Inactive, Open/Closed,
	// Enabled/Disabled and Yes/No (1/0). Matched case-insensitively.
	States map[string]float64 `yaml:"states"`
	// PointFrom chooses how value columns are named as points: "column"
	// (the header, unit removed), "file" (the file name without extension;
	// single-value-column files only) or "auto" (file for
	// single-value-column files, column otherwise). Default "auto".
	PointFrom string `yaml:"point_from"`
	// Settle skips files modified less than this long ago, so an export
	// still being written is not consumed. Default 2s; 0 disables.
	Settle *time.Duration `yaml:"settle"`
	// MaxFileSize is the largest file Read takes ("64MiB", "1GB" or a
	// number of bytes). A bigger file is refused, logged and left in
	// place, neither read nor moved: a file is parsed whole in memory, so
	// a huge file dropped into the folder by mistake must not take the
	// agent's memory. Default DefaultMaxFileSize.
	MaxFileSize *FileSize `yaml:"max_file_size"`
}

// DefaultSettle is the default of Settings.Settle.
const DefaultSettle = 2 * time.Second

// DefaultMaxFileSize is the default of Settings.MaxFileSize. Reading a
// file holds its bytes plus 32 bytes per sample, one sample per 13 to 35
// bytes of the real exports in testdata/bms: three to six times the file at
// the peak (see README.md). 64 MiB is a year of 15-minute data for about
// 300 points, and a few hundred MiB of memory at worst; 256 MiB would
// let one file take over a GiB of a small edge box.
const DefaultMaxFileSize = 64 << 20

// FileSize is a size in bytes, written like buffer.max_bytes in the agent
// config ("64MiB", "1GB", "1048576").
type FileSize int64

// UnmarshalYAML parses a size, naming the setting and its line on error.
func (s *FileSize) UnmarshalYAML(n *yaml.Node) error {
	v, err := agentconfig.ParseByteSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: settings.max_file_size: %w", n.Line, err)
	}
	*s = FileSize(v)
	return nil
}

// defaultStates are the state texts every device understands.
var defaultStates = map[string]float64{
	"on": 1, "off": 0,
	"true": 1, "false": 0,
	"occupied": 1, "unoccupied": 0,
	"active": 1, "inactive": 0,
	"open": 1, "closed": 0,
	"enabled": 1, "disabled": 0,
	"yes": 1, "no": 0,
}

// config is the validated form of Settings.
type config struct {
	path      string
	pattern   string
	loc       *time.Location
	processed string // as configured; resolved against dir in Connect
	failed    string
	states    map[string]float64
	pointFrom string
	settle    time.Duration
	maxSize   int64
}

// parseSettings decodes and validates a device's settings, reporting every
// problem at once. It does no I/O except loading the time zone.
func parseSettings(s driver.Settings) (config, error) {
	var raw Settings
	if s == nil {
		return config{}, errors.New("settings: missing: csvtrend needs at least settings.path")
	}
	if err := s.Decode(&raw); err != nil && !errors.Is(err, io.EOF) {
		return config{}, fmt.Errorf("decoding csvtrend settings: %w", err)
	}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	c := config{
		path:      filepath.Clean(raw.Path),
		pattern:   raw.Pattern,
		processed: raw.ProcessedDir,
		failed:    raw.FailedDir,
		pointFrom: raw.PointFrom,
		settle:    DefaultSettle,
		maxSize:   DefaultMaxFileSize,
	}
	if strings.TrimSpace(raw.Path) == "" {
		bad("settings.path: required: the folder the BMS exports to, or one CSV file")
	}
	if c.pattern == "" {
		c.pattern = "*.csv"
	}
	if _, err := filepath.Match(c.pattern, ""); err != nil || strings.ContainsRune(c.pattern, filepath.Separator) {
		bad("settings.pattern: %q is not a file-name pattern (want e.g. *.csv, without a directory)", c.pattern)
	}
	tz := raw.Timezone
	if tz == "" {
		tz = "UTC"
	}
	loc, err := time.LoadLocation(tz)
	if err != nil {
		bad("settings.timezone: %q is not an IANA time zone (want e.g. America/Chicago): %v", tz, err)
	}
	c.loc = loc
	switch c.pointFrom {
	case "":
		c.pointFrom = pointFromAuto
	case pointFromAuto, pointFromColumn, pointFromFile:
	default:
		bad("settings.point_from: %q: want auto, column or file", c.pointFrom)
	}
	if raw.Settle != nil {
		if *raw.Settle < 0 {
			bad("settings.settle: %s is negative: want a duration such as 2s, or 0", *raw.Settle)
		}
		c.settle = *raw.Settle
	}
	if raw.MaxFileSize != nil {
		if *raw.MaxFileSize <= 0 {
			bad("settings.max_file_size: must be above 0: want a size such as 64MiB, or leave it out for the default")
		}
		c.maxSize = int64(*raw.MaxFileSize)
	}
	c.states = maps.Clone(defaultStates)
	userStates := map[string]string{}
	for _, k := range slices.Sorted(maps.Keys(raw.States)) {
		v := raw.States[k]
		lk := strings.ToLower(strings.TrimSpace(k))
		switch {
		case lk == "":
			bad("settings.states: empty state text")
			continue
		case math.IsNaN(v) || math.IsInf(v, 0):
			bad("settings.states: %q: value must be a finite number", k)
			continue
		}
		if _, err := strconv.ParseFloat(lk, 64); err == nil {
			bad("settings.states: %q is a number already: only texts need mapping", k)
			continue
		}
		if prev, dup := userStates[lk]; dup && raw.States[prev] != v {
			bad("settings.states: %q and %q are the same text (matching ignores case) with different values", prev, k)
			continue
		}
		userStates[lk] = k
		c.states[lk] = v
	}
	for _, d := range []struct{ name, v string }{{"processed_dir", c.processed}, {"failed_dir", c.failed}} {
		if d.v != "" && raw.Path != "" && filepath.Clean(d.v) == c.path {
			bad("settings.%s: must differ from settings.path, or files would be read again", d.name)
		}
	}
	if c.processed != "" && c.processed == c.failed {
		bad("settings.failed_dir: must differ from processed_dir, so failed files stand out")
	}
	return c, errors.Join(errs...)
}

// New is the driver's Factory: it validates the device's settings and
// points and does no I/O beyond loading the time zone.
func New(dev driver.Device) (driver.Driver, error) {
	return newDriver(dev)
}

func newDriver(dev driver.Device) (*Driver, error) {
	var errs []error
	cfg, err := parseSettings(dev.Settings)
	if err != nil {
		errs = append(errs, err)
	}
	refs := map[string]bool{}
	var interval time.Duration
	for i, p := range dev.Points {
		switch {
		case strings.TrimSpace(p.Ref) == "":
			errs = append(errs, fmt.Errorf("point %d: ref: required: the column it reads (see the csvtrend README)", i+1))
		case refs[p.Ref]:
			errs = append(errs, fmt.Errorf("point %q: listed twice", p.Ref))
		}
		refs[p.Ref] = true
		if p.Settings != nil {
			var none struct{}
			if err := p.Settings.Decode(&none); err != nil && !errors.Is(err, io.EOF) {
				errs = append(errs, fmt.Errorf("point %q: csvtrend points take no settings besides ref: %w", p.Ref, err))
			}
		}
		// Read consumes whole files, so points read at different intervals
		// would lose the columns of the points not read.
		if p.Interval != 0 {
			if interval != 0 && p.Interval != interval {
				errs = append(errs, fmt.Errorf("point %q: interval %s differs from %s: csvtrend reads whole files, so all points share one interval; set it on the device", p.Ref, p.Interval, interval))
			}
			interval = p.Interval
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("csvtrend device %q: %w", dev.Name, err)
	}
	log := dev.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Driver{
		cfg:    cfg,
		parser: &parser{loc: cfg.loc, states: cfg.states, pointFrom: cfg.pointFrom},
		log:    log,
		now:    time.Now,
		seen:   map[string]fingerprint{},
		unused: map[string]bool{},
	}, nil
}

// Driver reads the trend files of one device. Its methods are safe for
// concurrent use; Read and Commit are meant for a single goroutine.
type Driver struct {
	cfg    config
	parser *parser
	log    *slog.Logger
	now    func() time.Time

	mu        sync.Mutex
	connected bool
	closed    bool
	// single is set when cfg.path is one file rather than a directory.
	single bool
	// dir is the directory holding the files; processed and failed are
	// resolved against it.
	dir, processed, failed string
	// pending are the files read since the last Commit.
	pending []pendingFile
	// seen are files read that could not be moved; they are not read
	// again while their content stays the same.
	seen map[string]fingerprint
	// unused holds the refs of columns no point reads, reported once.
	unused map[string]bool
	// warned holds paths already warned about (unmovable, unreadable), so
	// a file polled every interval is reported once.
	warned map[string]bool
	// tooBig holds the files refused for their size, by size and mtime,
	// so each is logged once while it stays the same.
	tooBig map[string]fingerprint
}

type pendingFile struct {
	path string
	fp   fingerprint
}

var (
	errClosed       = errors.New("csvtrend driver closed")
	errNotConnected = errors.New("csvtrend driver not connected: call Connect first")
)

// Connect checks the configured path and resolves the directories files
// are moved to. It may be called again after Read reported ErrConnLost
// (for instance when a network share went away).
func (d *Driver) Connect(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	// Connect after Close reopens: the poller reconnects this way after a
	// failed read (a network share that went away).
	if err := d.resolveLocked(); err != nil {
		return err
	}
	d.closed = false
	return nil
}

// resolveLocked stats the path and sets single, dir, processed and failed.
func (d *Driver) resolveLocked() error {
	fi, err := os.Stat(d.cfg.path)
	if err != nil {
		return fmt.Errorf("opening trend path %s: %w (check settings.path and that the agent may read it)", d.cfg.path, err)
	}
	switch {
	case fi.IsDir():
		d.single, d.dir = false, d.cfg.path
	case fi.Mode().IsRegular():
		d.single, d.dir = true, filepath.Dir(d.cfg.path)
	default:
		return fmt.Errorf("opening trend path %s: neither a directory nor a regular file", d.cfg.path)
	}
	d.processed = ResolveDir(d.dir, d.cfg.processed, DefaultProcessedDir)
	d.failed = ResolveDir(d.dir, d.cfg.failed, DefaultFailedDir)
	if !d.single && (d.processed == d.dir || d.failed == d.dir) {
		return fmt.Errorf("opening trend path %s: processed_dir and failed_dir must differ from it", d.dir)
	}
	d.connected = true
	return nil
}

// The folders consumed files move to when processed_dir and failed_dir are
// not set, inside the trend folder.
const (
	DefaultProcessedDir = "processed"
	DefaultFailedDir    = "failed"
)

// ResolveDir is where processed_dir or failed_dir (configured, empty for
// the default def) points for a trend folder base: an absolute path as it
// is, a relative one inside base. `sightglass-agent check` resolves them
// the same way to test that the agent may write there.
func ResolveDir(base, configured, def string) string {
	switch {
	case configured == "":
		return filepath.Join(base, def)
	case filepath.IsAbs(configured):
		return filepath.Clean(configured)
	}
	return filepath.Join(base, configured)
}

// Read consumes the oldest settled file not yet read and returns its
// samples for points; columns no point reads are ignored (and reported
// once). A file giving none of points' samples is consumed too, and the
// next one is tried, so Read returns (nil, nil) only when no file is left.
// With no points Read returns nothing and consumes nothing.
//
// Read consumes whole files: pass every point of the device on each call.
func (d *Driver) Read(ctx context.Context, points []driver.Point) ([]telemetry.Sample, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.closed:
		return nil, errClosed
	case !d.connected:
		return nil, errNotConnected
	case len(points) == 0:
		return nil, nil
	}
	ids := make(map[string][]uint64, len(points))
	for _, p := range points {
		ids[p.Ref] = append(ids[p.Ref], p.ID)
	}
	lookup := func(ref string) []uint64 { return ids[ref] }

	cands, err := d.candidatesLocked()
	if err != nil {
		return nil, err
	}
	for _, c := range cands {
		samples, consumed, err := d.readFileLocked(ctx, c, lookup)
		if err != nil {
			return nil, err
		}
		if consumed && len(samples) > 0 {
			return samples, nil
		}
	}
	return nil, nil
}

// candidatesLocked lists the files Read may consume, oldest name first:
// settled, not pending, not already read and unmovable.
func (d *Driver) candidatesLocked() ([]candidate, error) {
	var all []candidate
	if d.single {
		fi, err := os.Stat(d.cfg.path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return nil, nil // read and moved; a new export will reappear
		case err != nil:
			return nil, fmt.Errorf("reading trend file %s: %w: %w", d.cfg.path, err, driver.ErrConnLost)
		}
		all = []candidate{{path: d.cfg.path, info: fi}}
	} else {
		var err error
		all, err = listFiles(d.dir, d.cfg.pattern)
		if err != nil {
			// The folder vanished or a share dropped: let the poller back
			// off and Connect again.
			return nil, fmt.Errorf("listing trend folder %s: %w: %w", d.dir, err, driver.ErrConnLost)
		}
	}
	cutoff := d.now().Add(-d.cfg.settle)
	out := all[:0]
	for _, c := range all {
		if slices.ContainsFunc(d.pending, func(p pendingFile) bool { return p.path == c.path }) {
			continue
		}
		if fp, ok := d.seen[c.path]; ok && fp.sameStat(c.info) {
			continue
		}
		if d.cfg.settle > 0 && c.info.ModTime().After(cutoff) {
			continue
		}
		out = append(out, c)
	}
	return out, nil
}

// readFileLocked reads and parses one file. consumed reports whether the
// file is now pending (its samples returned); a file failing to parse is
// moved to failed_dir and not consumed. An error is returned only for a
// cancelled context.
func (d *Driver) readFileLocked(ctx context.Context, c candidate, ids func(string) []uint64) ([]telemetry.Sample, bool, error) {
	log := d.log.With("file", c.path)
	data, fp, changed, err := readStable(c.path, d.cfg.maxSize)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, false, nil // moved away by someone else
	case errors.Is(err, errTooLarge):
		d.refuseLocked(c, err)
		return nil, false, nil
	case err != nil:
		d.warnOnce(c.path, "cannot read trend file; will retry", "err", err)
		return nil, false, nil
	case changed:
		log.Debug("trend file changed while being read; will retry once it settles")
		return nil, false, nil
	}
	if prev, ok := d.seen[c.path]; ok && prev.hash == fp.hash {
		// Touched but unchanged: remember the new stat so it is not
		// hashed again.
		d.seen[c.path] = fp
		return nil, false, nil
	}
	res, err := d.parser.parse(ctx, c.path, data, ids)
	if err != nil {
		if ctx.Err() != nil {
			return nil, false, fmt.Errorf("reading trend file %s: %w", c.path, ctx.Err())
		}
		d.fail(c.path, fp, err)
		return nil, false, nil
	}
	d.report(log, res)
	d.pending = append(d.pending, pendingFile{path: c.path, fp: fp})
	return res.samples, true, nil
}

// refuseLocked reports a file over max_file_size, once while its size and
// mtime stay the same. The file stays where it is, neither read nor moved
// to failed_dir: it may be a good export that only needs a higher cap, and
// failed_dir is for files to fix.
func (d *Driver) refuseLocked(c candidate, err error) {
	fp := fingerprint{size: c.info.Size(), mtime: c.info.ModTime()}
	if prev, ok := d.tooBig[c.path]; ok && prev.size == fp.size && prev.mtime.Equal(fp.mtime) {
		return
	}
	if d.tooBig == nil {
		d.tooBig = map[string]fingerprint{}
	}
	d.tooBig[c.path] = fp
	d.log.Error("refusing trend file larger than settings.max_file_size; leaving it in place, unread: split the export, or raise max_file_size if the agent has the memory",
		"file", c.path, "size", c.info.Size(), "max_file_size", d.cfg.maxSize, "err", err)
}

// fail moves an unparseable file to failed_dir, or remembers it if it
// cannot be moved, so it never blocks the files behind it.
func (d *Driver) fail(path string, fp fingerprint, cause error) {
	dst, err := moveFile(path, d.failed)
	if err != nil {
		d.seen[path] = fp
		d.log.Error("cannot parse trend file, nor move it to failed_dir; skipping it while it stays unchanged",
			"file", path, "err", cause, "move_err", err)
		return
	}
	d.log.Error("cannot parse trend file; moved it to failed_dir: fix or re-export it, then put it back",
		"file", path, "moved_to", dst, "err", cause)
}

// report logs what parsing a file found: one line per file, one per
// column with bad cells, one per short row group, unused columns once.
func (d *Driver) report(log *slog.Logger, res *fileResult) {
	for _, ref := range slices.Sorted(maps.Keys(res.bad)) {
		b := res.bad[ref]
		log.Warn("skipped cells that are neither numbers nor known states (add them to settings.states if they are)",
			"column", ref, "count", b.count, "first_line", b.line, "text", b.text)
	}
	if len(res.short) > 0 {
		log.Warn("skipped rows whose field count differs from the header (a truncated or malformed row)",
			"count", len(res.short), "first_line", res.short[0])
	}
	var newUnused []string
	for _, ref := range res.unused {
		if !d.unused[ref] {
			d.unused[ref] = true
			newUnused = append(newUnused, ref)
		}
	}
	if len(newUnused) > 0 {
		log.Info("ignoring columns no configured point reads", "columns", strings.Join(newUnused, ", "))
	}
	badCells := 0
	for _, b := range res.bad {
		badCells += b.count
	}
	log.Info("read trend file", "rows", res.rows, "samples", len(res.samples),
		"bad_cells", badCells, "skipped_rows", len(res.short))
}

func (d *Driver) warnOnce(path, msg string, args ...any) {
	if d.warned == nil {
		d.warned = map[string]bool{}
	}
	if d.warned[path] {
		return
	}
	d.warned[path] = true
	d.log.Warn(msg, append([]any{"file", path}, args...)...)
}

// Commit moves the files read since the last Commit to processed_dir. A
// file that cannot be moved is remembered by size, mtime and hash and not
// read again by this process; a file that changed since it was read is left
// in place to be read again whole, so rows appended late are not lost.
// Commit with nothing read does nothing.
func (d *Driver) Commit(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errClosed
	}
	for _, p := range d.pending {
		fi, err := os.Stat(p.path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue
		case err != nil:
			d.seen[p.path] = p.fp
			d.log.Warn("cannot check trend file before moving it; not reading it again in this process", "file", p.path, "err", err)
			continue
		case !p.fp.sameStat(fi):
			d.log.Warn("trend file changed after it was read; leaving it to be read again (its earlier rows will repeat)", "file", p.path)
			continue
		}
		dst, err := moveFile(p.path, d.processed)
		if err != nil {
			d.seen[p.path] = p.fp
			d.log.Warn("cannot move trend file to processed_dir; not reading it again in this process, but a restart will",
				"file", p.path, "err", err)
			continue
		}
		d.log.Debug("moved trend file to processed_dir", "file", p.path, "moved_to", dst)
	}
	d.pending = nil
	return nil
}

// Discover reads the headers of the files present, without consuming them,
// and returns one point per distinct column reference, with the unit from
// the header. Files whose header cannot be read are skipped and logged.
func (d *Driver) Discover(ctx context.Context) ([]driver.Point, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errClosed
	}
	if err := d.resolveLocked(); err != nil {
		return nil, err
	}
	var files []candidate
	if d.single {
		files = []candidate{{path: d.cfg.path}}
	} else {
		var err error
		if files, err = listFiles(d.dir, d.cfg.pattern); err != nil {
			return nil, fmt.Errorf("listing trend folder %s: %w: %w", d.dir, err, driver.ErrConnLost)
		}
	}
	var points []driver.Point
	at := map[string]int{}
	for _, f := range files {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		cols, err := d.headerOf(f.path)
		if errors.Is(err, errTooLarge) {
			d.log.Warn("skipping trend file in discovery: Read would refuse it", "file", f.path, "max_file_size", d.cfg.maxSize, "err", err)
			continue
		}
		if err != nil {
			d.log.Warn("skipping trend file in discovery: cannot read its header", "file", f.path, "err", err)
			continue
		}
		for _, c := range cols {
			if i, ok := at[c.ref]; ok {
				if points[i].Unit != c.unit {
					d.log.Warn("discovered point has different units in different files; keeping the first",
						"point", c.ref, "unit", points[i].Unit, "other_unit", c.unit, "file", f.path)
				}
				continue
			}
			at[c.ref] = len(points)
			points = append(points, driver.Point{Ref: c.ref, Name: c.ref, Unit: c.unit})
		}
	}
	return points, nil
}

// headerOf reads the header of a file no bigger than max_file_size,
// reading no further than the cap even if the file grows meanwhile.
func (d *Driver) headerOf(path string) ([]column, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() > d.cfg.maxSize {
		return nil, tooLarge(fi.Size(), d.cfg.maxSize)
	}
	return d.parser.header(path, io.LimitReader(f, d.cfg.maxSize))
}

// Close stops the driver; files read but not committed stay in place and
// are read again. Close is idempotent; every other method but Connect
// fails afterwards.
func (d *Driver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed, d.connected = true, false
	d.pending = nil
	return nil
}
