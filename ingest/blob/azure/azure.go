// Package azure is a blob.Store in an Azure Blob Storage container: the
// archive that any number of ingest replicas share.
//
// Writes are create-if-absent (Put Blob with If-None-Match: *), so the
// first replica to store a name wins and a retry can never replace it; a
// write that finds the name taken compares bytes and reports "already
// stored" or blob.ErrConflict, as every blob.Store does.
//
// The store authenticates with a Microsoft Entra ID token credential (a
// service principal's client certificate, a managed identity or a workload
// identity; see Credential), so no storage account key is ever at rest. A
// shared key is accepted only for a local emulator such as Azurite, on a
// loopback address, and the store logs that it is insecure.
package azure

import (
	"bytes"
	"context"
	"crypto/md5"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/streaming"
	azblobpkg "github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"

	"github.com/sightglass-bms/sightglass/ingest/blob"
)

// ContentType is the content type of every stored blob ending in .sgb:
// a batch is a zstd-compressed Sightglass frame. Other blobs (claims, point
// tables) are application/octet-stream.
const ContentType = "application/zstd"

const otherContentType = "application/octet-stream"

// Retry and timeout defaults. The agent keeps every batch in its buffer
// until the ingest acknowledges it and retries on its own with backoff, so
// the store's retries only smooth over a blip (a throttled request, a
// dropped connection); holding an agent's request open through a real
// outage would only tie up its in-flight slots and the load balancer's
// connections, and the agent's default request timeout is 30s.
const (
	// DefaultMaxRetries: three tries in all is enough to ride out a
	// transient 500/503 or a reset connection.
	DefaultMaxRetries = 2
	// DefaultTryTimeout bounds one HTTP try. A default batch is at most
	// 8 MiB; from an Azure VM to its region's storage that takes well
	// under a second, so 15s only fires on a stuck connection. Raise it
	// with Options.Retry.TryTimeout when max_batch_bytes is large and the
	// link slow.
	DefaultTryTimeout = 15 * time.Second
	// DefaultRetryDelay and DefaultMaxRetryDelay: azcore backs off
	// exponentially with jitter from the first to at most the second
	// (unless the service sends Retry-After); 250ms, 500ms is short
	// enough to stay inside one agent request.
	DefaultRetryDelay    = 250 * time.Millisecond
	DefaultMaxRetryDelay = 2 * time.Second
	// DefaultOpTimeout is the deadline of one store call (Put, Get, List,
	// Ping) across all its tries, on top of the caller's context: with the
	// values above, tries plus backoff cannot exceed it by much, and an
	// answer of 503 within the agent's 30s lets it retry sooner.
	DefaultOpTimeout = 25 * time.Second
)

// Options configure New. Exactly one of Credential and SharedKey is set.
type Options struct {
	// AccountURL is the storage account's blob endpoint, such as
	// https://myaccount.blob.core.windows.net, or for Azurite
	// http://127.0.0.1:10000/devstoreaccount1.
	AccountURL string
	// Container is the container the archive lives in. The ingest does
	// not create it in production (its role is scoped to the container,
	// which therefore exists first); see CreateContainer for emulators.
	Container string
	// Credential is the token credential, from Credential in production.
	// It requires an https AccountURL.
	Credential azcore.TokenCredential
	// SharedKey is for a local emulator only: New refuses it unless the
	// account URL's host is a loopback address.
	SharedKey *container.SharedKeyCredential
	// Transport sends the requests; nil is azcore's default HTTP client.
	// Tests set it to trust a test certificate.
	Transport policy.Transporter
	// Retry tunes azcore's retry policy; zero fields take the Default*
	// values above (MaxRetries below zero means a single try).
	Retry policy.RetryOptions
	// OpTimeout is the deadline of one store call; zero is
	// DefaultOpTimeout.
	OpTimeout time.Duration
	// Logger receives the insecure-mode warning; nil discards it.
	Logger *slog.Logger
}

// Store is a blob.Store in one Azure Blob Storage container. It is safe for
// concurrent use, also by several processes.
type Store struct {
	client    *container.Client
	account   string // the account URL, for errors
	container string
	opTimeout time.Duration
	log       *slog.Logger
}

var _ blob.Store = (*Store)(nil)

// New returns a store for the container. It does no I/O: a wrong
// credential or a missing container shows on the first call (Ping is the
// cheap one to make).
func New(o Options) (*Store, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("store", "azure")
	u, err := url.Parse(o.AccountURL)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, fmt.Errorf("azure blob store: account URL %q is not an http(s) URL such as https://myaccount.blob.core.windows.net", o.AccountURL)
	}
	if err := CheckContainerName(o.Container); err != nil {
		return nil, fmt.Errorf("azure blob store: %w", err)
	}
	containerURL := strings.TrimRight(o.AccountURL, "/") + "/" + o.Container
	opts := &container.ClientOptions{ClientOptions: azcore.ClientOptions{
		Retry:     retryOptions(o.Retry),
		Transport: o.Transport,
		Telemetry: policy.TelemetryOptions{ApplicationID: "sightglass-ingest"},
	}}
	var client *container.Client
	switch {
	case o.Credential != nil && o.SharedKey != nil:
		return nil, errors.New("azure blob store: both a token credential and a shared key given: use one")
	case o.Credential != nil:
		if u.Scheme != "https" {
			return nil, fmt.Errorf("azure blob store: account URL %s is not https: a token must never travel in clear text", o.AccountURL)
		}
		client, err = container.NewClient(containerURL, o.Credential, opts)
	case o.SharedKey != nil:
		if !IsLoopbackHost(u.Hostname()) {
			return nil, fmt.Errorf("azure blob store: a shared key is accepted only for a local emulator on a loopback address, not %s: use a token credential (client-certificate, managed-identity or workload-identity)", u.Host)
		}
		log.Warn("INSECURE: the blob store authenticates with a shared account key; this is for a local emulator only, never for a real storage account",
			"account_url", o.AccountURL, "container", o.Container)
		client, err = container.NewClientWithSharedKeyCredential(containerURL, o.SharedKey, opts)
	default:
		return nil, errors.New("azure blob store: no credential given")
	}
	if err != nil {
		return nil, fmt.Errorf("azure blob store: making the client for %s: %w", containerURL, err)
	}
	ot := o.OpTimeout
	if ot <= 0 {
		ot = DefaultOpTimeout
	}
	return &Store{client: client, account: o.AccountURL, container: o.Container, opTimeout: ot, log: log}, nil
}

func retryOptions(r policy.RetryOptions) policy.RetryOptions {
	if r.MaxRetries == 0 {
		r.MaxRetries = DefaultMaxRetries
	}
	if r.TryTimeout == 0 {
		r.TryTimeout = DefaultTryTimeout
	}
	if r.RetryDelay == 0 {
		r.RetryDelay = DefaultRetryDelay
	}
	if r.MaxRetryDelay == 0 {
		r.MaxRetryDelay = DefaultMaxRetryDelay
	}
	return r
}

// IsLoopbackHost reports whether host (without a port) is "localhost" or
// a loopback IP address: the only places a shared key may be sent.
func IsLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// CheckContainerName reports whether name is a valid container name: 3 to
// 63 characters of lower-case letters, digits and single hyphens, starting
// and ending with a letter or digit.
func CheckContainerName(name string) error {
	if len(name) < 3 || len(name) > 63 {
		return fmt.Errorf("container name %q must be 3 to 63 characters long", name)
	}
	for i, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
		case r == '-' && i > 0 && i < len(name)-1 && name[i-1] != '-':
		default:
			return fmt.Errorf("container name %q: use lower-case letters, digits and single hyphens inside, nothing else", name)
		}
	}
	return nil
}

// Container is the container's name.
func (s *Store) Container() string { return s.container }

// String names the store in logs: the account URL and container.
func (s *Store) String() string {
	return strings.TrimRight(s.account, "/") + "/" + s.container
}

func contentType(name string) string {
	if strings.HasSuffix(name, ".sgb") {
		return ContentType
	}
	return otherContentType
}

// Put stores data under name if absent, in one Put Blob request with
// If-None-Match: * and the bytes' MD5, which the service checks. A 409
// BlobAlreadyExists or 412 ConditionNotMet means the name is taken (by
// another replica, or by an earlier try of this very call whose answer was
// lost): the stored bytes are read back and compared, so the answer is
// (false, nil) when identical and ErrConflict when not.
func (s *Store) Put(ctx context.Context, name string, data []byte) (bool, error) {
	if err := blob.ValidName(name); err != nil {
		return false, fmt.Errorf("putting blob: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("putting blob %s: %w", name, err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.opTimeout)
	defer cancel()
	sum := md5.Sum(data)
	ct := contentType(name)
	// The retry policy rewinds the body between tries, so it must be a
	// seeker over a copy nobody else changes while the call runs.
	body := streaming.NopCloser(bytes.NewReader(bytes.Clone(data)))
	_, err := s.client.NewBlockBlobClient(name).Upload(ctx, body, &blockblob.UploadOptions{
		HTTPHeaders:             &azblobpkg.HTTPHeaders{BlobContentType: &ct},
		TransactionalValidation: azblobpkg.TransferValidationTypeMD5(sum[:]),
		AccessConditions: &azblobpkg.AccessConditions{ModifiedAccessConditions: &azblobpkg.ModifiedAccessConditions{
			IfNoneMatch: new(azcore.ETagAny),
		}},
	})
	if err == nil {
		return true, nil
	}
	if !nameTaken(err) {
		return false, s.explain(ctx, "putting blob "+name, err)
	}
	existing, err := s.get(ctx, name)
	if errors.Is(err, blob.ErrNotFound) {
		// Taken a moment ago and gone now: only someone deleting from the
		// archive, which nothing here does, can cause that.
		return false, fmt.Errorf("putting blob %s in %s: the name was taken, then the blob vanished: someone is deleting from the archive; stop them and retry", name, s)
	}
	if err != nil {
		return false, fmt.Errorf("putting blob %s: the name is taken; reading it back to compare: %w", name, err)
	}
	if !bytes.Equal(existing, data) {
		return false, fmt.Errorf("putting blob %s in %s: %d bytes already stored differ from the %d bytes offered: %w", name, s, len(existing), len(data), blob.ErrConflict)
	}
	return false, nil
}

// nameTaken reports whether a Put failed because the name exists: 409
// BlobAlreadyExists or 412 ConditionNotMet (the If-None-Match: * failing),
// status and code both, so a proxy's stray code cannot make a failed
// write read as stored.
func nameTaken(err error) bool {
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		return false
	}
	return re.StatusCode == http.StatusConflict && re.ErrorCode == string(bloberror.BlobAlreadyExists) ||
		re.StatusCode == http.StatusPreconditionFailed && re.ErrorCode == string(bloberror.ConditionNotMet)
}

// Get returns the blob's bytes, or an error wrapping ErrNotFound. When the
// service holds the blob's MD5 (it does for every blob Put stored), the
// bytes are checked against it.
func (s *Store) Get(ctx context.Context, name string) ([]byte, error) {
	if err := blob.ValidName(name); err != nil {
		return nil, fmt.Errorf("getting blob: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("getting blob %s: %w", name, err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.opTimeout)
	defer cancel()
	return s.get(ctx, name)
}

func (s *Store) get(ctx context.Context, name string) ([]byte, error) {
	op := "getting blob " + name
	resp, err := s.client.NewBlockBlobClient(name).DownloadStream(ctx, nil)
	if bloberror.HasCode(err, bloberror.BlobNotFound) {
		return nil, fmt.Errorf("%s: %w", op, blob.ErrNotFound)
	}
	if err != nil {
		return nil, s.explain(ctx, op, err)
	}
	if resp.Body == nil {
		// azblob turns a 304 Not Modified into a success without a body
		// (and its retry reader would then crash); we send no condition
		// that allows a 304, so whatever sent it is not the service.
		return nil, fmt.Errorf("%s in %s: the answer had no body (HTTP 304 to an unconditional read): a proxy between the ingest and the account is interfering; retry", op, s)
	}
	// The retry reader resumes a body cut off mid-way with a ranged
	// request pinned to the blob's ETag, so it cannot splice two versions.
	r := resp.NewRetryReader(ctx, &azblobpkg.RetryReaderOptions{MaxRetries: DefaultMaxRetries})
	defer r.Close()
	var buf bytes.Buffer
	if resp.ContentLength != nil && *resp.ContentLength > 0 && *resp.ContentLength <= blobMaxPrealloc {
		buf.Grow(int(*resp.ContentLength))
	}
	if _, err := buf.ReadFrom(r); err != nil {
		return nil, s.explain(ctx, op+": reading the body", err)
	}
	data := buf.Bytes()
	if resp.ContentLength != nil && int64(len(data)) != *resp.ContentLength {
		return nil, fmt.Errorf("%s: read %d bytes, the service announced %d: retry", op, len(data), *resp.ContentLength)
	}
	if len(resp.ContentMD5) == md5.Size {
		if sum := md5.Sum(data); !bytes.Equal(sum[:], resp.ContentMD5) {
			return nil, fmt.Errorf("%s: the bytes read do not match the MD5 stored with the blob: damaged in transit or at rest; retry, and if it persists an operator must check the blob", op)
		}
	}
	return data, nil
}

// blobMaxPrealloc caps the buffer Get allocates before reading, so a
// wrong Content-Length cannot make it allocate more than a batch can be.
const blobMaxPrealloc = 256 << 20

// List returns the names that start with prefix, sorted, reading the
// container's flat listing page by page.
func (s *Store) List(ctx context.Context, prefix string) ([]string, error) {
	if err := blob.ValidPrefix(prefix); err != nil {
		return nil, fmt.Errorf("listing blobs: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("listing blobs %q: %w", prefix, err)
	}
	var opts container.ListBlobsFlatOptions
	if prefix != "" {
		opts.Prefix = &prefix
	}
	var names []string
	pager := s.client.NewListBlobsFlatPager(&opts)
	for pager.More() {
		// The timeout is per page: a large listing (a whole archive for a
		// rebuild) takes many pages and may take far longer than one.
		pctx, cancel := context.WithTimeout(ctx, s.opTimeout)
		page, err := pager.NextPage(pctx)
		if err != nil {
			err = s.explain(pctx, fmt.Sprintf("listing blobs %q", prefix), err)
			cancel()
			return nil, err
		}
		cancel()
		if page.Segment == nil {
			continue
		}
		for _, item := range page.Segment.BlobItems {
			if item.Name != nil && blob.ValidName(*item.Name) == nil {
				names = append(names, *item.Name)
			}
		}
	}
	// The service lists in byte order already; sorting keeps the
	// contract whatever an emulator does.
	slices.Sort(names)
	return names, nil
}

// Ping lists at most one blob under a prefix nothing uses: one cheap
// request that fails the same ways a Put would (unreachable, bad
// credential, missing role, missing container) and needs no permission
// beyond the ones the archive needs anyway. The server's /readyz uses it.
func (s *Store) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.opTimeout)
	defer cancel()
	one := int32(1)
	prefix := pingPrefix
	pager := s.client.NewListBlobsFlatPager(&container.ListBlobsFlatOptions{Prefix: &prefix, MaxResults: &one})
	if _, err := pager.NextPage(ctx); err != nil {
		return s.explain(ctx, "checking the archive container", err)
	}
	return nil
}

// pingPrefix starts no blob name: '~' is not a name character.
const pingPrefix = "~ping/"

// CreateContainer creates the container if it does not exist. Production
// needs no call: the operator creates the container and grants the
// ingest's identity a role on it. An emulator starts empty, so the ingest
// calls it in shared-key-emulator mode, and tests do.
func (s *Store) CreateContainer(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.opTimeout)
	defer cancel()
	_, err := s.client.Create(ctx, nil)
	if err == nil || bloberror.HasCode(err, bloberror.ContainerAlreadyExists) {
		return nil
	}
	return s.explain(ctx, "creating the archive container", err)
}

// StatusError is a failed request, told concisely: the HTTP status and
// the service's error code. It wraps the azcore.ResponseError, whose own
// message holds the whole request and response.
type StatusError struct {
	Status int
	Code   string
	Err    *azcore.ResponseError
}

func (e *StatusError) Error() string {
	if e.Code == "" {
		return fmt.Sprintf("HTTP %d %s", e.Status, http.StatusText(e.Status))
	}
	return fmt.Sprintf("HTTP %d %s", e.Status, e.Code)
}

func (e *StatusError) Unwrap() error { return e.Err }

// explain wraps err from op with what it means and what to do about it.
func (s *Store) explain(ctx context.Context, op string, err error) error {
	where := fmt.Sprintf("%s in %s", op, s)
	if cerr := ctx.Err(); cerr != nil {
		// Keep both: errors.Is(err, context.Canceled) is how a caller
		// tells its own cancellation from a store failure.
		return fmt.Errorf("%s: %w (%w)", where, cerr, err)
	}
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		if ae := credentialHint(err); ae != "" {
			return fmt.Errorf("%s: %s: %w", where, ae, err)
		}
		return fmt.Errorf("%s: %w: the storage account does not answer; check account_url and the network (the agents keep their batches and retry)", where, err)
	}
	se := &StatusError{Status: re.StatusCode, Code: re.ErrorCode, Err: re}
	var hint string
	switch {
	case re.ErrorCode == string(bloberror.AuthorizationPermissionMismatch),
		re.ErrorCode == string(bloberror.AuthorizationFailure),
		re.ErrorCode == "AuthorizationPermissionDenied":
		hint = fmt.Sprintf("the ingest's identity lacks the Storage Blob Data Contributor role on container %s: assign it (see ingest/blob/azure/README.md)", s.container)
	case re.ErrorCode == "KeyBasedAuthenticationNotPermitted":
		hint = "the account refuses shared keys (as it should): use auth client-certificate, managed-identity or workload-identity"
	case re.ErrorCode == string(bloberror.InvalidAuthenticationInfo),
		re.ErrorCode == "AuthenticationFailed",
		re.StatusCode == http.StatusUnauthorized:
		hint = "the storage account refused the ingest's credential: check tenant_id, client_id and that the token is for this account's tenant"
	case re.ErrorCode == string(bloberror.ContainerNotFound):
		hint = fmt.Sprintf("container %s does not exist in %s: create it (az storage container create --name %s --auth-mode login) and grant the ingest's identity Storage Blob Data Contributor on it", s.container, s.account, s.container)
	case re.ErrorCode == string(bloberror.ContainerBeingDeleted), re.ErrorCode == string(bloberror.ContainerDisabled):
		hint = fmt.Sprintf("container %s is being deleted or disabled: an operator must restore it", s.container)
	case re.StatusCode == http.StatusForbidden:
		hint = "the storage account refused the request: check the role assignment and the account's network rules (firewall, private endpoint)"
	case re.StatusCode == http.StatusTooManyRequests, re.StatusCode == http.StatusServiceUnavailable, re.StatusCode >= 500:
		hint = "the storage service is busy or failing: the agents keep their batches and retry"
	default:
		hint = "the storage service refused the request"
	}
	return fmt.Errorf("%s: %w: %s", where, se, hint)
}

// Delete removes the blob; one already gone is not an error, so several
// compactors can delete the same sources. Only compaction deletes archived
// data, and only what it has stored again in compacted form and verified;
// the hot store's retry queue deletes its own markers.
func (s *Store) Delete(ctx context.Context, name string) error {
	if err := blob.ValidName(name); err != nil {
		return fmt.Errorf("deleting blob: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.opTimeout)
	defer cancel()
	_, err := s.client.NewBlockBlobClient(name).Delete(ctx, nil)
	if err != nil && !bloberror.HasCode(err, bloberror.BlobNotFound) {
		return s.explain(ctx, "deleting blob "+name, err)
	}
	return nil
}
