package bacnet

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"strings"
	"testing"
)

// TestOneSendPoint reads this package's source: the only call that can
// put bytes on a socket is in Client.send, behind the guard, and no other
// socket is opened than the client's own. A new write path added anywhere
// else fails here before it could skip the guard.
func TestOneSendPoint(t *testing.T) {
	// The methods that send on a net.Conn, net.PacketConn or *net.UDPConn
	// (a strings.Builder's WriteByte is no socket).
	netWrites := map[string]bool{"Write": true, "WriteTo": true, "WriteToUDP": true, "WriteToUDPAddrPort": true,
		"WriteMsgUDP": true, "WriteMsgUDPAddrPort": true, "WriteMsgIP": true, "WriteToIP": true}
	entries, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	var writes, sockets []string
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range f.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok {
				continue
			}
			ast.Inspect(fn, func(n ast.Node) bool {
				call, ok := n.(*ast.CallExpr)
				if !ok {
					return true
				}
				sel, ok := call.Fun.(*ast.SelectorExpr)
				if !ok {
					return true
				}
				where := fset.Position(call.Pos()).String() + " in " + fn.Name.Name
				switch m := sel.Sel.Name; {
				case netWrites[m]:
					writes = append(writes, where)
					if fn.Name.Name != "send" {
						t.Errorf("%s: %s writes outside Client.send", where, m)
					}
				case strings.HasPrefix(m, "Dial") || strings.HasPrefix(m, "Listen"):
					sockets = append(sockets, where)
					if fn.Name.Name != "New" && fn.Name.Name != "listenBroadcast" {
						t.Errorf("%s: a socket opened outside New and listenBroadcast", where)
					}
				}
				return true
			})
		}
	}
	if len(writes) != 1 {
		t.Errorf("socket writes at %v; want exactly the one in Client.send", writes)
	}
	if len(sockets) != 2 {
		t.Errorf("sockets opened at %v; want the client's own in New and the receive-only one in listenBroadcast", sockets)
	}
}
