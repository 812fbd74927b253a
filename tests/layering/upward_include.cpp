// Compiled against the KV layer (duo_kv) by the `layering_upward_include_fails` test, which
// passes only when this fails with the header not found: the device seam sits above the KV
// caches, so its header is not on duo_kv's include path.
#include "engine/backend.h"

int duo_layering_probe_upward() { return 0; }
