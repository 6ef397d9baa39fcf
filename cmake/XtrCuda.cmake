# CUDA is optional. With nvcc present (XTR_CUDA=AUTO) the translation units in kernels/ are compiled, so that they
# never rot even on machines without a GPU; tests that need a device skip at run time.
set(XTR_HAS_CUDA OFF)
if(NOT XTR_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 90)
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(XTR_HAS_CUDA ON)
    # nvcc flags of every translation unit in kernels/, also those of the spill check (tests/cuda/check_spills.sh):
    # relaxed constexpr because rng.hpp keeps std::array in __host__ __device__ code (warning #20013 otherwise);
    # every nvcc and host-compiler warning an error; #554 off: nvcc reports ops::HeadsView<const T>'s conversion to
    # HeadsView<const T> as never callable, not seeing that its requires-clause removes it for a const T.
    set(XTR_CUDA_FLAGS --expt-relaxed-constexpr -Werror=all-warnings -diag-suppress=554
        -Xcompiler=-Wall,-Wextra,-Werror)
  elseif(XTR_CUDA STREQUAL "ON")
    message(FATAL_ERROR "xtr: XTR_CUDA=ON but no CUDA compiler was found; install nvcc or set XTR_CUDA=OFF")
  endif()
endif()
message(STATUS "xtr: CUDA translation units ${XTR_HAS_CUDA}")
