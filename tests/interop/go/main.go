// Command tlogclient reads a MedLedger through C2SP tlog-tiles with Tessera's
// client package only: it verifies the signed checkpoint, builds inclusion
// proofs (for entries fetched from entry bundles) and a consistency proof from
// tiles, verifies each, and prints what it proved as JSON. Any failure exits 1.
// The Python interop test (tests/integration/test_tlog_interop.py) runs it.
package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"

	f_note "github.com/transparency-dev/formats/note"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera/client"
)

var (
	storageURL  = flag.String("storage_url", "", "base tlog-tiles URL, ending in /")
	publicKey   = flag.String("public_key", "", "file holding the log's note verifier key")
	origin      = flag.String("origin", "", "the log's checkpoint origin")
	bearerToken = flag.String("bearer_token", "", "bearer token for entry bundles")
	indices     = flag.String("indices", "", "comma-separated entry indices to prove")
	oldSize     = flag.Uint64("old_size", 0, "earlier tree size to prove consistency from (0: none)")
	oldRoot     = flag.String("old_root", "", "hex root hash of the tree at old_size")
)

type inclusion struct {
	Index    uint64   `json:"index"`
	LeafHash string   `json:"leaf_hash"`
	Proof    []string `json:"proof"`
}

type report struct {
	Size        uint64      `json:"size"`
	Root        string      `json:"root"`
	Inclusion   []inclusion `json:"inclusion"`
	Consistency []string    `json:"consistency"`
}

func hexes(hashes [][]byte) []string {
	out := make([]string, len(hashes))
	for i, h := range hashes {
		out[i] = hex.EncodeToString(h)
	}
	return out
}

func run(ctx context.Context) (*report, error) {
	u, err := url.Parse(*storageURL)
	if err != nil {
		return nil, err
	}
	fetcher, err := client.NewHTTPFetcher(u, nil)
	if err != nil {
		return nil, err
	}
	if *bearerToken != "" {
		fetcher.SetAuthorizationHeader("Bearer " + *bearerToken)
	}
	key, err := os.ReadFile(*publicKey)
	if err != nil {
		return nil, err
	}
	verifier, err := f_note.NewVerifier(strings.TrimSpace(string(key)))
	if err != nil {
		return nil, fmt.Errorf("verifier key: %v", err)
	}
	cp, _, _, err := client.FetchCheckpoint(ctx, fetcher.ReadCheckpoint, verifier, *origin)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %v", err)
	}
	builder, err := client.NewProofBuilder(ctx, cp.Size, fetcher.ReadTile)
	if err != nil {
		return nil, err
	}
	out := &report{Size: cp.Size, Root: hex.EncodeToString(cp.Hash)}
	for _, text := range strings.Split(*indices, ",") {
		if text == "" {
			continue
		}
		index, err := strconv.ParseUint(text, 10, 64)
		if err != nil {
			return nil, err
		}
		bundle, err := client.GetEntryBundle(ctx, fetcher.ReadEntryBundle, index/256, cp.Size)
		if err != nil {
			return nil, fmt.Errorf("entry bundle of %d: %v", index, err)
		}
		leaf := rfc6962.DefaultHasher.HashLeaf(bundle.Entries[index%256])
		hashes, err := builder.InclusionProof(ctx, index)
		if err != nil {
			return nil, fmt.Errorf("inclusion proof of %d: %v", index, err)
		}
		if err := proof.VerifyInclusion(rfc6962.DefaultHasher, index, cp.Size, leaf, hashes, cp.Hash); err != nil {
			return nil, fmt.Errorf("inclusion of %d does not verify: %v", index, err)
		}
		out.Inclusion = append(out.Inclusion, inclusion{index, hex.EncodeToString(leaf), hexes(hashes)})
	}
	if *oldSize > 0 {
		root, err := hex.DecodeString(*oldRoot)
		if err != nil {
			return nil, err
		}
		hashes, err := builder.ConsistencyProof(ctx, *oldSize, cp.Size)
		if err != nil {
			return nil, fmt.Errorf("consistency proof: %v", err)
		}
		if err := proof.VerifyConsistency(rfc6962.DefaultHasher, *oldSize, cp.Size, hashes, root, cp.Hash); err != nil {
			return nil, fmt.Errorf("consistency does not verify: %v", err)
		}
		out.Consistency = hexes(hashes)
	}
	return out, nil
}

func main() {
	flag.Parse()
	out, err := run(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, "tlogclient:", err)
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		os.Exit(1)
	}
}
