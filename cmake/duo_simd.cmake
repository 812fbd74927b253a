# Target flags of the CPU kernels' instruction-set files (src/backend/cpu/simd_level.h).
#
# On x86-64 every build compiles the kernels of each SIMD level: *_avx2.cpp with AVX2+FMA+F16C,
# *_avx512.cpp with AVX-512 F/BW/VL/VNNI as well, each file alone (per-source COMPILE_OPTIONS),
# and picks the level at run time from the CPU. The rest of the engine gets -march=native with
# DUO_NATIVE=ON (the default: fastest here, runs only on CPUs like this one) and the compiler's
# baseline x86-64 with DUO_NATIVE=OFF (the portable build: runs on any x86-64 CPU).
set(DUO_SIMD_AVX2_FLAGS -mavx2 -mfma -mf16c)
set(DUO_SIMD_AVX512_FLAGS ${DUO_SIMD_AVX2_FLAGS} -mavx512f -mavx512bw -mavx512vl -mavx512vnni)

function(duo_simd_kernels target)
  get_target_property(sources ${target} SOURCES)
  if(NOT CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
    return()  # the files compile to nothing there: scalar kernels only
  endif()
  foreach(src IN LISTS sources)
    if(src MATCHES "/backend/cpu/[a-z0-9_]+_avx512\\.cpp$")
      set_source_files_properties(${src} PROPERTIES COMPILE_OPTIONS "${DUO_SIMD_AVX512_FLAGS}")
    elseif(src MATCHES "/backend/cpu/[a-z0-9_]+_avx2\\.cpp$")
      set_source_files_properties(${src} PROPERTIES COMPILE_OPTIONS "${DUO_SIMD_AVX2_FLAGS}")
    elseif(src MATCHES "/backend/cpu/simd_level\\.cpp$" AND DUO_NATIVE)
      set_source_files_properties(${src} PROPERTIES COMPILE_DEFINITIONS DUO_BUILD_NATIVE)
    endif()
  endforeach()
endfunction()

# ctest: no AVX instruction can run before the level check. The kernel files define no weak
# symbol with AVX code (the linker could keep that copy for generic callers); in a portable
# build no other file of the backend has any AVX instruction.
function(duo_simd_tests)
  if(NOT CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
    return()
  endif()
  set(mode "")
  if(NOT DUO_NATIVE)
    set(mode --portable)
  endif()
  add_test(NAME simd_objects_contained
           COMMAND python3 ${CMAKE_SOURCE_DIR}/tests/backend/check_simd_objects.py $<TARGET_FILE:duo_backend_cpu> ${mode})
endfunction()
