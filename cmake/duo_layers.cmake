# The engine's layers as libraries (docs/architecture.md, "The layers, bottom up").
#
# Each layer gets an include root of its own, build/layers/<layer>/, holding symbolic links to
# its headers under their usual paths (kv/kv_codec.h, ...). A layer's sources see only its own
# root and the roots of the layers it links (PUBLIC, hence transitively): a header of a higher
# layer is simply not on the include path, so an upward `#include` fails to compile with
# "No such file or directory". `src/` itself is on no library's include path. For the same
# reason every quoted include in src/ names its folder (tests/layering/check_includes.py):
# the compiler's look-up next to the including file would otherwise bypass the roots.
#
# duo_layer(<target> FILES <globs under src/>... [EXCLUDE <files under src/>...] [DEPS <targets>...]
#           [PRIVATE_DEPS <targets>...] [PUBLIC_HEADERS <files under include/>...] [ROOT_ONLY]
#           [COMPILE_OPTIONS <options>...])
#   FILES: the layer's headers (.h, .cuh: linked into its root) and sources (.cpp, .cu).
#   DEPS: layers (and libraries) linked PUBLIC: their roots are on the include path of this
#         layer and of every layer above it.
#   PRIVATE_DEPS: linked PRIVATE: this layer's sources see their roots, the layers above do not
#         (the engine and the backends it makes: nothing above the engine can name a backend).
#   PUBLIC_HEADERS: the headers of the public API (include/duo/*.h) this layer defines, linked
#              into its root as duo/<name>.h: a layer sees the public headers of its own and
#              lower layers only (include/ itself is on no library's include path either).
#   EXCLUDE: files the globs match that another layer (or duo_claim) holds.
#   ROOT_ONLY: make the include root but no library (CUDA layers of a build without CUDA,
#              whose headers the CPU emulation tests still include).
function(duo_layer name)
  cmake_parse_arguments(L "ROOT_ONLY" "" "FILES;EXCLUDE;DEPS;PRIVATE_DEPS;COMPILE_OPTIONS;PUBLIC_HEADERS" ${ARGN})
  set(src ${CMAKE_SOURCE_DIR}/src)
  set(root ${CMAKE_BINARY_DIR}/layers/${name})
  file(REMOVE_RECURSE ${root})
  set(sources "")
  foreach(pattern IN LISTS L_FILES)
    file(GLOB matched CONFIGURE_DEPENDS RELATIVE ${src} ${src}/${pattern})
    if(NOT matched)
      message(FATAL_ERROR "duo_layer(${name}): '${pattern}' matches no file in src/")
    endif()
    foreach(rel IN LISTS matched)
      if(rel IN_LIST L_EXCLUDE)
        continue()
      endif()
      set_property(GLOBAL APPEND PROPERTY DUO_LAYER_CLAIMED ${rel})
      if(rel MATCHES "\\.(h|cuh)$")
        get_filename_component(dir ${root}/${rel} DIRECTORY)
        file(MAKE_DIRECTORY ${dir})
        file(CREATE_LINK ${src}/${rel} ${root}/${rel} SYMBOLIC)
      elseif(rel MATCHES "\\.(cpp|cu)$")
        list(APPEND sources ${src}/${rel})
      endif()
    endforeach()
  endforeach()
  foreach(rel IN LISTS L_PUBLIC_HEADERS)
    if(NOT EXISTS ${CMAKE_SOURCE_DIR}/include/${rel})
      message(FATAL_ERROR "duo_layer(${name}): include/${rel} does not exist")
    endif()
    set_property(GLOBAL APPEND PROPERTY DUO_LAYER_CLAIMED_PUBLIC ${rel})
    get_filename_component(dir ${root}/${rel} DIRECTORY)
    file(MAKE_DIRECTORY ${dir})
    file(CREATE_LINK ${CMAKE_SOURCE_DIR}/include/${rel} ${root}/${rel} SYMBOLIC)
  endforeach()
  set_property(GLOBAL APPEND PROPERTY DUO_LAYER_ROOTS_${name} ${root})
  set_property(GLOBAL PROPERTY DUO_LAYER_DEPS_${name} ${L_DEPS})
  set_property(GLOBAL PROPERTY DUO_LAYER_PRIVATE_DEPS_${name} ${L_PRIVATE_DEPS})
  if(L_ROOT_ONLY)
    return()
  endif()
  add_library(${name} STATIC ${sources})
  target_include_directories(${name} PUBLIC ${root})
  target_link_libraries(${name} PUBLIC ${L_DEPS})
  if(L_PRIVATE_DEPS)
    target_link_libraries(${name} PRIVATE ${L_PRIVATE_DEPS})
  endif()
  if(L_COMPILE_OPTIONS)
    set_property(TARGET ${name} PROPERTY COMPILE_OPTIONS ${L_COMPILE_OPTIONS})
  endif()
endfunction()

# The include roots a layer hands the layers above it: its own and, through its DEPS, those of
# the layers below it (PRIVATE_DEPS stop here).
function(duo_layer_public_roots name out)
  get_property(roots GLOBAL PROPERTY DUO_LAYER_ROOTS_${name})
  get_property(deps GLOBAL PROPERTY DUO_LAYER_DEPS_${name})
  _duo_deps_public_roots("${deps}" dep_roots)
  list(APPEND roots ${dep_roots})
  list(REMOVE_DUPLICATES roots)
  set(${out} ${roots} PARENT_SCOPE)
endfunction()

# The public include roots of the duo_ layers among deps (other targets have none of ours).
function(_duo_deps_public_roots deps out)
  set(roots "")
  foreach(dep IN LISTS deps)
    if(dep MATCHES "^duo_")
      duo_layer_public_roots(${dep} dep_roots)
      list(APPEND roots ${dep_roots})
    endif()
  endforeach()
  set(${out} ${roots} PARENT_SCOPE)
endfunction()

# The include roots a layer's sources see: the public ones and those of its PRIVATE_DEPS. Known
# with or without CUDA (ROOT_ONLY layers record their DEPS too), so the layering probes of the
# CUDA layers build in every build tree.
function(duo_layer_roots name out)
  duo_layer_public_roots(${name} roots)
  get_property(deps GLOBAL PROPERTY DUO_LAYER_PRIVATE_DEPS_${name})
  _duo_deps_public_roots("${deps}" dep_roots)
  list(APPEND roots ${dep_roots})
  list(REMOVE_DUPLICATES roots)
  set(${out} ${roots} PARENT_SCOPE)
endfunction()

# Files of src/ built outside the layer libraries (by the CLI).
function(duo_claim)
  set_property(GLOBAL APPEND PROPERTY DUO_LAYER_CLAIMED ${ARGN})
endfunction()

# Fails the configuration when a file of src/ (or a public header of include/) belongs to no
# layer or to two: a new file must be placed in the graph before it builds.
function(duo_layers_check_claims_in dir prop)
  get_property(claimed GLOBAL PROPERTY ${prop})
  file(GLOB_RECURSE all CONFIGURE_DEPENDS RELATIVE ${CMAKE_SOURCE_DIR}/${dir}
       ${CMAKE_SOURCE_DIR}/${dir}/*.h ${CMAKE_SOURCE_DIR}/${dir}/*.cuh
       ${CMAKE_SOURCE_DIR}/${dir}/*.cpp ${CMAKE_SOURCE_DIR}/${dir}/*.cu)
  foreach(rel IN LISTS all)
    list(FIND claimed ${rel} first)
    if(first EQUAL -1)
      message(FATAL_ERROR "${dir}/${rel} belongs to no layer: add it to a duo_layer() in cmake/duo_layers.cmake")
    endif()
    list(REMOVE_AT claimed ${first})
    if(rel IN_LIST claimed)
      message(FATAL_ERROR "${dir}/${rel} is claimed by two layers in cmake/duo_layers.cmake")
    endif()
  endforeach()
endfunction()
function(duo_layers_check_claims)
  duo_layers_check_claims_in(src DUO_LAYER_CLAIMED)
  duo_layers_check_claims_in(include DUO_LAYER_CLAIMED_PUBLIC)
endfunction()

include(${CMAKE_CURRENT_LIST_DIR}/duo_simd.cmake)  # duo_simd_kernels, duo_simd_tests

# The CPU layers, bottom up. DEPS name only the layers directly below; the rest come through them.
duo_layer(duo_core FILES core/* PUBLIC_HEADERS duo/duo_policy.h duo/host_device.h
          DEPS Threads::Threads fmt::fmt)
# The model's description and files: GGUF reading, the model's shape, full-size presets.
# Hugging Face directories: safetensors, the checkpoint's files and config.json (model/hf_config.*).
duo_layer(duo_io FILES io/gguf.* io/safetensors.* io/hf_checkpoint.* model/config.* model/presets.* model/hf_config.*
          DEPS duo_core nlohmann_json::nlohmann_json)
duo_layer(duo_sample FILES sample/* PUBLIC_HEADERS duo/sampler.h duo/logit_adjust.h
          DEPS duo_core)
duo_layer(duo_tokenizer FILES tokenizer/* tokenizer/jinja/*
          DEPS duo_io PkgConfig::PCRE2 nlohmann_json::nlohmann_json)
# What both backends' KV caches share (byte accounting, row codecs, the quantized page
# arithmetic, page allocation) and head plans. Head patterns (io/head_pattern.*) build here:
# they produce HeadPlans. The caches themselves belong to their backends.
duo_layer(duo_kv FILES kv/* io/head_pattern.* PUBLIC_HEADERS duo/kv_type.h duo/head_plan.h
          DEPS duo_io)
# The model's description (Model: config, weight views of a GGUF file, a Hugging Face directory
# or synthetic floats, the DuoAttention head order, RoPE frequencies), below both backends.
duo_layer(duo_model FILES model/model.* model/hf_load.* model/weight_view.h
          DEPS duo_kv)
# The device seam (ModelBackend, SequenceState): serving, evaluation and tools go through it.
duo_layer(duo_seam FILES engine/backend.* engine/attention_observer.h PUBLIC_HEADERS duo/device.h
          DEPS duo_kv)
# The CPU backend in one folder: forward pass (cpu_forward.*), KV cache (kv_cache.*), kernels,
# adapter to the seam.
duo_layer(duo_backend_cpu FILES backend/cpu/*
          DEPS duo_seam duo_model duo_sample)
duo_simd_kernels(duo_backend_cpu)  # cmake/duo_simd.cmake: the per-level kernel files' target flags
# The public API (include/duo/engine.h: Engine, Session) over either backend. It makes the
# backends (PRIVATE: the layers above see the seam, the model and the tokenizer it hands out,
# never a backend's headers; with CUDA, CMakeLists.txt adds duo_backend_cuda the same way).
duo_layer(duo_engine FILES engine/engine.cpp engine/utf8_stream.* PUBLIC_HEADERS duo/engine.h
          DEPS duo_seam duo_model duo_sample duo_tokenizer PRIVATE_DEPS duo_backend_cpu)
duo_layer(duo_eval FILES eval/*
          DEPS duo_engine)
# The HTTP layer (http_server.cpp) needs cpp-httplib and is compiled into the CLI only.
duo_layer(duo_serve FILES serve/* EXCLUDE serve/http_server.cpp
          DEPS duo_engine)
duo_claim(serve/http_server.cpp)
duo_layer(duo_calibrate FILES calibrate/*
          DEPS duo_eval)
# The calibration devices by name (calibrate/devices/): above the CPU calibration and, with
# CUDA, the CUDA one (CMakeLists.txt links it), as the engine is above both backends.
duo_layer(duo_calibrate_devices FILES calibrate/devices/*
          DEPS duo_calibrate)

# The CUDA layers (with DUO_CUDA=ON, after enable_language(CUDA)): the kernels (duo_cuda: the
# .cu files and the headers they include), the backend's host runtime over them, and the CUDA
# calibration. Without CUDA only their include roots exist (tests emulate the kernels).
# The kernels' launchers report failures through cuda_check (DUO_CUDA_TRY, fail_arg): it is theirs.
set(DUO_CUDA_KERNEL_FILES backend/cuda/cuda_check.h backend/cuda/cuda_check.cpp backend/cuda/kernels.h
    backend/cuda/synthetic.h)
macro(duo_cuda_layers)
  set(_root_only ROOT_ONLY)
  if(DUO_CUDA)
    set(_root_only "")
  endif()
  # nvcc rejects the directory-wide g++ options: CUDA sources get host warnings through
  # -Xcompiler (DUO_CUDA_FLAGS), C++ sources of the same library their usual options.
  set(_cxx_options -Wall -Wextra)
  if(DUO_NATIVE)
    list(APPEND _cxx_options -march=native)
  endif()
  list(JOIN _cxx_options "$<SEMICOLON>" _cxx_options)
  set(_cuda_options ${DUO_CUDA_FLAGS} "$<$<COMPILE_LANGUAGE:CXX>:${_cxx_options}>")
  duo_layer(duo_cuda ${_root_only} FILES backend/cuda/*.cu backend/cuda/*.cuh ${DUO_CUDA_KERNEL_FILES}
            DEPS duo_kv CUDA::cudart CUDA::cublas COMPILE_OPTIONS ${_cuda_options})
  set(_host_files backend/cuda/*.h backend/cuda/*.cpp)
  duo_layer(duo_backend_cuda ${_root_only} FILES ${_host_files} EXCLUDE ${DUO_CUDA_KERNEL_FILES}
            DEPS duo_cuda duo_seam duo_model duo_sample CUDA::cublas)
  duo_layer(duo_calibrate_cuda ${_root_only} FILES calibrate/cuda/*
            DEPS duo_calibrate duo_backend_cuda COMPILE_OPTIONS ${_cuda_options})
endmacro()

function(duo_layering_cuda_probe_roots)
  duo_layer_roots(duo_backend_cuda roots)
  if(NOT roots)
    message(FATAL_ERROR "duo_layering_tests: duo_backend_cuda has no include roots (duo_cuda_layers() not called)")
  endif()
  foreach(probe cuda_sees_model cuda_not_cpu)
    target_include_directories(duo_layering_probe_${probe} PRIVATE ${roots})
  endforeach()
endfunction()

# ctest: the layering holds. A translation unit of duo_kv that includes the seam's header fails
# to compile for want of the header (and the same one including its own layer and those below
# builds, so the failure is the layering's); includes name their folders (check_includes.py).
function(duo_layering_tests)
  set(dir ${CMAKE_SOURCE_DIR}/tests/layering)
  foreach(probe upward downward)
    add_library(duo_layering_probe_${probe} OBJECT EXCLUDE_FROM_ALL ${dir}/${probe}_include.cpp)
    target_link_libraries(duo_layering_probe_${probe} PRIVATE duo_kv)
  endforeach()
  add_test(NAME layering_upward_include_fails
           COMMAND ${CMAKE_COMMAND} --build ${CMAKE_BINARY_DIR} --target duo_layering_probe_upward)
  set_tests_properties(layering_upward_include_fails PROPERTIES
                       PASS_REGULAR_EXPRESSION "engine/backend\\.h: No such file or directory")
  add_test(NAME layering_downward_include_builds
           COMMAND ${CMAKE_COMMAND} --build ${CMAKE_BINARY_DIR} --target duo_layering_probe_downward)
  # Both build in this build tree: one at a time.
  set_tests_properties(layering_upward_include_fails layering_downward_include_builds PROPERTIES
                       RESOURCE_LOCK duo_build_tree TIMEOUT 300)
  add_test(NAME layering_includes_named COMMAND python3 ${dir}/check_includes.py ${CMAKE_SOURCE_DIR})

  # The CPU KV cache is the CPU backend's: the seam (and duo_kv below it) cannot include it.
  # The probe's first include, the seam's own header, is found: only the cache's fails.
  add_library(duo_layering_probe_seam_not_cpu_cache OBJECT EXCLUDE_FROM_ALL ${dir}/seam_not_cpu_cache.cpp)
  target_link_libraries(duo_layering_probe_seam_not_cpu_cache PRIVATE duo_seam)
  add_test(NAME layering_seam_not_cpu_cache
           COMMAND ${CMAKE_COMMAND} --build ${CMAKE_BINARY_DIR} --target duo_layering_probe_seam_not_cpu_cache)
  set_tests_properties(layering_seam_not_cpu_cache PROPERTIES
                       PASS_REGULAR_EXPRESSION "backend/cpu/kv_cache\\.h: No such file or directory"
                       RESOURCE_LOCK duo_build_tree TIMEOUT 300)

  # The backends are the engine's (linked PRIVATE): serving and evaluation, above it, see the
  # seam and the public engine but cannot include a header of the CPU backend.
  foreach(layer serve eval)
    add_library(duo_layering_probe_${layer}_not_cpu OBJECT EXCLUDE_FROM_ALL ${dir}/above_seam_not_cpu.cpp)
    target_link_libraries(duo_layering_probe_${layer}_not_cpu PRIVATE duo_${layer})
    add_test(NAME layering_${layer}_not_cpu_backend
             COMMAND ${CMAKE_COMMAND} --build ${CMAKE_BINARY_DIR} --target duo_layering_probe_${layer}_not_cpu)
    set_tests_properties(layering_${layer}_not_cpu_backend PROPERTIES
                         PASS_REGULAR_EXPRESSION "backend/cpu/cpu_forward\\.h: No such file or directory"
                         RESOURCE_LOCK duo_build_tree TIMEOUT 300)
  endforeach()

  # The two backends side by side over the model's description: the CUDA runtime's sources
  # (duo_backend_cuda's include roots, CUDA or not) see the description but not the CPU backend.
  # (The roots are read once the whole tree is configured: with CUDA the CUDA layers come later.)
  foreach(probe cuda_sees_model cuda_not_cpu)
    add_library(duo_layering_probe_${probe} OBJECT EXCLUDE_FROM_ALL ${dir}/${probe}.cpp)
  endforeach()
  cmake_language(DEFER DIRECTORY ${CMAKE_SOURCE_DIR} CALL duo_layering_cuda_probe_roots)
  add_test(NAME layering_cuda_backend_sees_model
           COMMAND ${CMAKE_COMMAND} --build ${CMAKE_BINARY_DIR} --target duo_layering_probe_cuda_sees_model)
  add_test(NAME layering_cuda_backend_not_cpu
           COMMAND ${CMAKE_COMMAND} --build ${CMAKE_BINARY_DIR} --target duo_layering_probe_cuda_not_cpu)
  set_tests_properties(layering_cuda_backend_not_cpu PROPERTIES
                       PASS_REGULAR_EXPRESSION "backend/cpu/cpu_forward\\.h: No such file or directory")
  set_tests_properties(layering_cuda_backend_sees_model layering_cuda_backend_not_cpu PROPERTIES
                       RESOURCE_LOCK duo_build_tree TIMEOUT 300)

  # The public API stands alone: one translation unit including every include/duo/*.h, compiled
  # with include/ as its only include path (no layer roots, no src/, no libraries), builds; so a
  # public header that includes an internal one fails it. The probe beside it shows that such
  # an include does fail there: the public engine header plus the seam's internal one.
  file(GLOB public_headers CONFIGURE_DEPENDS RELATIVE ${CMAKE_SOURCE_DIR}/include ${CMAKE_SOURCE_DIR}/include/duo/*.h)
  set(tu "// Generated by cmake/duo_layers.cmake (duo_layering_tests): every public header.\n")
  foreach(h IN LISTS public_headers)
    string(APPEND tu "#include \"${h}\"\n")
  endforeach()
  string(APPEND tu "int duo_public_headers_probe() { return 0; }\n")
  file(CONFIGURE OUTPUT ${CMAKE_BINARY_DIR}/layering/public_headers.cpp CONTENT "${tu}")
  add_library(duo_layering_probe_public OBJECT EXCLUDE_FROM_ALL ${CMAKE_BINARY_DIR}/layering/public_headers.cpp)
  add_library(duo_layering_probe_public_internal OBJECT EXCLUDE_FROM_ALL ${dir}/public_internal_include.cpp)
  foreach(probe duo_layering_probe_public duo_layering_probe_public_internal)
    target_include_directories(${probe} PRIVATE ${CMAKE_SOURCE_DIR}/include)
  endforeach()
  add_test(NAME layering_public_headers_alone
           COMMAND ${CMAKE_COMMAND} --build ${CMAKE_BINARY_DIR} --target duo_layering_probe_public)
  add_test(NAME layering_public_internal_include_fails
           COMMAND ${CMAKE_COMMAND} --build ${CMAKE_BINARY_DIR} --target duo_layering_probe_public_internal)
  set_tests_properties(layering_public_internal_include_fails PROPERTIES
                       PASS_REGULAR_EXPRESSION "engine/backend\\.h: No such file or directory")
  set_tests_properties(layering_public_headers_alone layering_public_internal_include_fails PROPERTIES
                       RESOURCE_LOCK duo_build_tree TIMEOUT 300)
endfunction()
