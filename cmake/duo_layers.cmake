# The engine's layers as libraries (docs/architecture.md, "The layers, bottom up").
#
# Each layer gets an include root of its own, build/layers/<layer>/, holding symbolic links to
# its headers under their usual paths (kv/kv_cache.h, ...). A layer's sources see only its own
# root and the roots of the layers it links (PUBLIC, hence transitively): a header of a higher
# layer is simply not on the include path, so an upward `#include` fails to compile with
# "No such file or directory". `src/` itself is on no library's include path. For the same
# reason every quoted include in src/ names its folder (tests/layering/check_includes.py):
# the compiler's look-up next to the including file would otherwise bypass the roots.
#
# duo_layer(<target> FILES <globs under src/>... [EXCLUDE <files under src/>...] [DEPS <targets>...]
#           [ROOT_ONLY] [COMPILE_OPTIONS <options>...])
#   FILES: the layer's headers (.h, .cuh: linked into its root) and sources (.cpp, .cu).
#   EXCLUDE: files the globs match that another layer (or duo_claim) holds.
#   ROOT_ONLY: make the include root but no library (CUDA layers of a build without CUDA,
#              whose headers the CPU emulation tests still include).
function(duo_layer name)
  cmake_parse_arguments(L "ROOT_ONLY" "" "FILES;EXCLUDE;DEPS;COMPILE_OPTIONS" ${ARGN})
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
  set_property(GLOBAL APPEND PROPERTY DUO_LAYER_ROOTS_${name} ${root})
  if(L_ROOT_ONLY)
    return()
  endif()
  add_library(${name} STATIC ${sources})
  target_include_directories(${name} PUBLIC ${root})
  target_link_libraries(${name} PUBLIC ${L_DEPS})
  if(L_COMPILE_OPTIONS)
    set_property(TARGET ${name} PROPERTY COMPILE_OPTIONS ${L_COMPILE_OPTIONS})
  endif()
endfunction()

# Files of src/ built outside the layer libraries (by the CLI).
function(duo_claim)
  set_property(GLOBAL APPEND PROPERTY DUO_LAYER_CLAIMED ${ARGN})
endfunction()

# Fails the configuration when a file of src/ belongs to no layer or to two: a new file must be
# placed in the graph before it builds.
function(duo_layers_check_claims)
  get_property(claimed GLOBAL PROPERTY DUO_LAYER_CLAIMED)
  file(GLOB_RECURSE all CONFIGURE_DEPENDS RELATIVE ${CMAKE_SOURCE_DIR}/src
       ${CMAKE_SOURCE_DIR}/src/*.h ${CMAKE_SOURCE_DIR}/src/*.cuh
       ${CMAKE_SOURCE_DIR}/src/*.cpp ${CMAKE_SOURCE_DIR}/src/*.cu)
  foreach(rel IN LISTS all)
    list(FIND claimed ${rel} first)
    if(first EQUAL -1)
      message(FATAL_ERROR "src/${rel} belongs to no layer: add it to a duo_layer() in cmake/duo_layers.cmake")
    endif()
    list(REMOVE_AT claimed ${first})
    if(rel IN_LIST claimed)
      message(FATAL_ERROR "src/${rel} is claimed by two layers in cmake/duo_layers.cmake")
    endif()
  endforeach()
endfunction()

# The CPU layers, bottom up. DEPS name only the layers directly below; the rest come through them.
duo_layer(duo_core FILES core/*
          DEPS Threads::Threads fmt::fmt)
# The model's description and files: GGUF reading, the model's shape, full-size presets.
# Hugging Face directories: safetensors, the checkpoint's files and config.json (model/hf_config.*).
duo_layer(duo_io FILES io/gguf.* io/safetensors.* io/hf_checkpoint.* model/config.* model/presets.* model/hf_config.*
          DEPS duo_core nlohmann_json::nlohmann_json)
duo_layer(duo_sample FILES sample/*
          DEPS duo_core)
duo_layer(duo_tokenizer FILES tokenizer/* tokenizer/jinja/*
          DEPS duo_io PkgConfig::PCRE2 nlohmann_json::nlohmann_json)
# KV caches and head plans. Head patterns (io/head_pattern.*) build here: they produce HeadPlans.
duo_layer(duo_kv FILES kv/* io/head_pattern.*
          DEPS duo_io)
# The device seam (ModelBackend, SequenceState): serving, evaluation and tools go through it.
duo_layer(duo_seam FILES engine/backend.*
          DEPS duo_kv)
# The CPU backend: forward pass (model/model.*), kernels (backend/cpu), adapter to the seam.
duo_layer(duo_backend_cpu FILES backend/cpu/* model/model.* model/hf_load.* engine/cpu_backend.*
          DEPS duo_seam duo_sample)
# The public API (include/duo/engine.h: Engine, Session) over either backend.
duo_layer(duo_engine FILES engine/engine.cpp engine/utf8_stream.*
          DEPS duo_backend_cpu duo_tokenizer)
target_include_directories(duo_engine PUBLIC ${CMAKE_SOURCE_DIR}/include)
duo_layer(duo_eval FILES eval/*
          DEPS duo_engine)
# The HTTP layer (http_server.cpp) needs cpp-httplib and is compiled into the CLI only.
duo_layer(duo_serve FILES serve/* EXCLUDE serve/http_server.cpp
          DEPS duo_engine)
duo_claim(serve/http_server.cpp)
duo_layer(duo_calibrate FILES calibrate/*
          DEPS duo_eval)

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
            DEPS duo_cuda duo_backend_cpu CUDA::cublas)
  duo_layer(duo_calibrate_cuda ${_root_only} FILES calibrate/cuda/*
            DEPS duo_calibrate duo_backend_cuda COMPILE_OPTIONS ${_cuda_options})
endmacro()

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
endfunction()
