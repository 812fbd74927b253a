// Compiled against the KV layer (duo_kv) by the `layering_downward_include_builds` test: the
// same kind of translation unit as upward_include.cpp, including the layer's own headers and
// those of the layers below it (model description, core), must build.
#include "core/error.h"
#include "kv/kv_bytes.h"
#include "model/config.h"

int duo_layering_probe_downward() { return 0; }
