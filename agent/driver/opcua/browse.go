package opcua

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"

	"github.com/sightglass-bms/sightglass/pkg/driver"
)

// Node is a variable discovery found.
type Node struct {
	// NodeID is the node's id in its string form: the point's ref.
	NodeID string `json:"node_id"`
	// Path is the path from the start node, display names joined by "/".
	Path string `json:"path"`
	// DisplayName is the node's display name.
	DisplayName string `json:"display_name"`
	// DataType names the value's data type (Double, Boolean, ...).
	DataType string `json:"data_type"`
	// Unit is the EngineeringUnits property's display name, if any.
	Unit string `json:"unit,omitempty"`
}

// BrowseLimits bound a browse.
type BrowseLimits struct {
	// Start is the node to start from; default the Objects folder (i=85).
	Start string
	// Depth is how many levels below Start to follow; default 6.
	Depth int
	// Max is how many variables to return at most; default 5000.
	Max int
	// Batch is how many nodes one Read may name (the server's
	// MaxNodesPerRead); default 100.
	Batch int
}

// errBrowseFull stops the walk once Max variables are found.
var errBrowseFull = errors.New("browse limit reached")

// browse walks the address space from lim.Start through hierarchical
// references, collecting variables with their data type and unit. Every
// request goes through the guard: Browse, BrowseNext and Read only.
func browse(ctx context.Context, g *guard, lim BrowseLimits, progress func(found int)) ([]Node, bool, error) {
	if lim.Start == "" {
		lim.Start = ua.NewNumericNodeID(0, id.ObjectsFolder).String()
	}
	if lim.Depth <= 0 {
		lim.Depth = 6
	}
	if lim.Max <= 0 {
		lim.Max = 5000
	}
	if lim.Batch <= 0 {
		lim.Batch = 100
	}
	start, err := ua.ParseNodeID(lim.Start)
	if err != nil {
		return nil, false, fmt.Errorf("start node %q: %w", lim.Start, err)
	}
	w := walker{g: g, lim: lim, seen: map[string]bool{start.String(): true}, progress: progress}
	err = w.walk(ctx, start, "", 0)
	full := errors.Is(err, errBrowseFull)
	if err != nil && !full {
		return w.found, false, err
	}
	if err := w.describe(ctx); err != nil {
		return w.found, full, err
	}
	return w.found, full, nil
}

type walker struct {
	g        *guard
	lim      BrowseLimits
	seen     map[string]bool
	found    []Node
	progress func(int)
}

func (w *walker) walk(ctx context.Context, n *ua.NodeID, path string, depth int) error {
	if depth >= w.lim.Depth {
		return nil
	}
	refs, err := w.g.Node(n).References(ctx, id.HierarchicalReferences, ua.BrowseDirectionForward, ua.NodeClassObject|ua.NodeClassVariable, true)
	if err != nil {
		return fmt.Errorf("browsing %s: %w", n, err)
	}
	for _, r := range refs {
		if r == nil || r.NodeID == nil {
			continue
		}
		child := ua.NewNodeIDFromExpandedNodeID(r.NodeID)
		key := child.String()
		if w.seen[key] || (child.Namespace() == 0 && child.IntID() == id.Server) {
			// The Server object is the server's own diagnostics, not
			// building data, and large.
			continue
		}
		w.seen[key] = true
		// The path is of display names, what the server shows people;
		// the browse name stands in where a node has none.
		name := ""
		if r.BrowseName != nil {
			name = r.BrowseName.Name
		}
		if r.DisplayName != nil && r.DisplayName.Text != "" {
			name = r.DisplayName.Text
		}
		childPath := strings.TrimPrefix(path+"/"+name, "/")
		if r.NodeClass == ua.NodeClassVariable && !isPropertyRef(r) {
			w.found = append(w.found, Node{NodeID: key, Path: childPath, DisplayName: name})
			if w.progress != nil && len(w.found)%100 == 0 {
				w.progress(len(w.found))
			}
			if len(w.found) >= w.lim.Max {
				return errBrowseFull
			}
		}
		if err := w.walk(ctx, child, childPath, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// isPropertyRef reports a HasProperty reference: properties (EURange,
// EngineeringUnits) describe a variable, they are not points.
func isPropertyRef(r *ua.ReferenceDescription) bool {
	return r.ReferenceTypeID != nil && r.ReferenceTypeID.IntID() == id.HasProperty && r.ReferenceTypeID.Namespace() == 0
}

// describe reads each variable's data type and engineering unit, in
// batches, through the guard.
func (w *walker) describe(ctx context.Context) error {
	batch := w.lim.Batch
	for start := 0; start < len(w.found); start += batch {
		chunk := w.found[start:min(start+batch, len(w.found))]
		req := &ua.ReadRequest{TimestampsToReturn: ua.TimestampsToReturnNeither}
		for _, n := range chunk {
			nid, _ := ua.ParseNodeID(n.NodeID)
			req.NodesToRead = append(req.NodesToRead, &ua.ReadValueID{NodeID: nid, AttributeID: ua.AttributeIDDataType, DataEncoding: &ua.QualifiedName{}})
		}
		res, err := w.g.Read(ctx, req)
		if err != nil {
			return fmt.Errorf("reading data types: %w", err)
		}
		for i, dv := range res.Results {
			if i >= len(chunk) || dv == nil || dv.Value == nil {
				continue
			}
			switch dt := dv.Value.Value().(type) {
			case *ua.NodeID:
				chunk[i].DataType = dataTypeName(dt)
			case *ua.ExpandedNodeID: // what gopcua's own server answers
				chunk[i].DataType = dataTypeName(ua.NewNodeIDFromExpandedNodeID(dt))
			}
		}
		for i := range chunk {
			unit, err := w.unit(ctx, chunk[i].NodeID)
			if err != nil {
				return err
			}
			chunk[i].Unit = unit
		}
	}
	return nil
}

// unit returns the display name of a variable's EngineeringUnits property.
func (w *walker) unit(ctx context.Context, nodeID string) (string, error) {
	nid, _ := ua.ParseNodeID(nodeID)
	refs, err := w.g.Node(nid).References(ctx, id.HasProperty, ua.BrowseDirectionForward, ua.NodeClassVariable, false)
	if err != nil {
		return "", fmt.Errorf("browsing the properties of %s: %w", nodeID, err)
	}
	for _, r := range refs {
		if r == nil || r.BrowseName == nil || r.BrowseName.Name != "EngineeringUnits" || r.NodeID == nil {
			continue
		}
		res, err := w.g.Read(ctx, &ua.ReadRequest{
			NodesToRead:        []*ua.ReadValueID{valueID(ua.NewNodeIDFromExpandedNodeID(r.NodeID))},
			TimestampsToReturn: ua.TimestampsToReturnNeither,
		})
		if err != nil {
			return "", fmt.Errorf("reading the unit of %s: %w", nodeID, err)
		}
		if len(res.Results) == 1 && res.Results[0].Value != nil {
			if eo, ok := res.Results[0].Value.Value().(*ua.ExtensionObject); ok && eo != nil {
				if eu, ok := eo.Value.(*ua.EUInformation); ok && eu.DisplayName != nil {
					return eu.DisplayName.Text, nil
				}
			}
		}
	}
	return "", nil
}

// dataTypeName names the standard data types; others keep their node id.
func dataTypeName(n *ua.NodeID) string {
	if n.Namespace() == 0 {
		switch n.IntID() {
		case id.Boolean:
			return "Boolean"
		case id.SByte:
			return "SByte"
		case id.Byte:
			return "Byte"
		case id.Int16:
			return "Int16"
		case id.UInt16:
			return "UInt16"
		case id.Int32:
			return "Int32"
		case id.UInt32:
			return "UInt32"
		case id.Int64:
			return "Int64"
		case id.UInt64:
			return "UInt64"
		case id.Float:
			return "Float"
		case id.Double:
			return "Double"
		case id.String:
			return "String"
		case id.DateTime:
			return "DateTime"
		case id.LocalizedText:
			return "LocalizedText"
		}
	}
	return n.String()
}

// numericType reports data types a point can carry.
func numericType(name string) bool {
	switch name {
	case "Boolean", "SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64", "Float", "Double":
		return true
	}
	return false
}

// Discover lists the numeric variables under browse_start (default the
// Objects folder) as points (see driver.Discoverer), their browse path as
// name and their EngineeringUnits as unit.
func (d *Driver) Discover(ctx context.Context) ([]driver.Point, error) {
	if err := d.ensure(ctx); err != nil {
		return nil, fmt.Errorf("discovering %s: %w", d.cfg.endpoint, err)
	}
	lim := d.cfg.browse
	d.mu.Lock()
	lim.Batch = d.maxNodes
	d.mu.Unlock()
	nodes, full, err := browse(ctx, d.g, lim, nil)
	if err != nil {
		return nil, fmt.Errorf("discovering %s: %w", d.cfg.endpoint, err)
	}
	if full {
		d.log.Warn("discovery stopped at its node limit; list the points instead", "found", len(nodes))
	}
	var out []driver.Point
	for _, n := range nodes {
		if !numericType(n.DataType) {
			continue
		}
		out = append(out, driver.Point{Ref: n.NodeID, Name: n.Path, Unit: n.Unit})
	}
	return out, nil
}
