# GEOMFAST_CUDA=AUTO|ON|OFF. AUTO builds the CUDA backend where nvcc and cuBLAS/cuSOLVER are
# found: the CUDA toolkit, or the nvidia-cublas / nvidia-cusolver wheels (nvidia/cu13/{include,lib},
# versioned .so names only, so they are linked by full name). Otherwise csrc/cuda/stub.cpp keeps
# the API the same and reports why.
set(GF_CUDA_BUILT OFF)
set(GF_CUDA_RPATH "")
set(GF_CUDA_WHY "GEOMFAST_CUDA=OFF")

if(NOT GEOMFAST_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  # cuBLAS / cuSOLVER: toolkit first, then the pip wheels beside this Python.
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
      "import nvidia, os; print([p for p in nvidia.__path__][0])"
    OUTPUT_VARIABLE _nv_root OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _nv_rc ERROR_QUIET)
  set(_cu_hints "")
  if(_nv_rc EQUAL 0)
    list(APPEND _cu_hints "${_nv_root}/cu13")
  endif()
  find_path(GF_CUBLAS_INCLUDE cublas_v2.h HINTS ${_cu_hints} ENV CUDA_HOME ENV CUDA_PATH PATH_SUFFIXES include)
  find_path(GF_CUSOLVER_INCLUDE cusolverDn.h HINTS ${_cu_hints} ENV CUDA_HOME ENV CUDA_PATH PATH_SUFFIXES include)
  find_library(GF_CUBLAS_LIB NAMES cublas libcublas.so.13 libcublas.so.12
               HINTS ${_cu_hints} ENV CUDA_HOME PATH_SUFFIXES lib lib64)
  find_library(GF_CUSOLVER_LIB NAMES cusolver libcusolver.so.12 libcusolver.so.11
               HINTS ${_cu_hints} ENV CUDA_HOME PATH_SUFFIXES lib lib64)
  if(NOT CMAKE_CUDA_COMPILER)
    set(GF_CUDA_WHY "nvcc not found")
  elseif(NOT GF_CUBLAS_INCLUDE OR NOT GF_CUBLAS_LIB OR NOT GF_CUSOLVER_INCLUDE OR NOT GF_CUSOLVER_LIB)
    set(GF_CUDA_WHY "cuBLAS/cuSOLVER not found (pip install nvidia-cublas nvidia-cusolver)")
  else()
    set(GF_CUDA_BUILT ON)
  endif()
  if(GEOMFAST_CUDA STREQUAL "ON" AND NOT GF_CUDA_BUILT)
    message(FATAL_ERROR "GEOMFAST_CUDA=ON but the CUDA backend cannot be built: ${GF_CUDA_WHY}")
  endif()
endif()

if(GF_CUDA_BUILT)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES 80 90)
  endif()
  enable_language(CUDA)
  set(CMAKE_CUDA_STANDARD 17)
  file(GLOB GF_CUDA_SOURCES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/csrc/cuda/*.cu)
  # gram_wgmma.cu uses Hopper's arch-specific wgmma (sm_90a): compiled for that target alone,
  # whatever CMAKE_CUDA_ARCHITECTURES says (its launcher refuses devices other than 9.0).
  list(FILTER GF_CUDA_SOURCES EXCLUDE REGEX "gram_wgmma\\.cu$")
  add_library(geomfast_cuda_sm90a OBJECT ${CMAKE_SOURCE_DIR}/csrc/cuda/gram_wgmma.cu)
  set_target_properties(geomfast_cuda_sm90a PROPERTIES CUDA_ARCHITECTURES OFF CUDA_SEPARABLE_COMPILATION OFF
                        CUDA_RUNTIME_LIBRARY Static)
  target_include_directories(geomfast_cuda_sm90a PRIVATE ${CMAKE_SOURCE_DIR}/csrc/include ${CMAKE_SOURCE_DIR}/csrc
                             ${GF_CUBLAS_INCLUDE} ${GF_CUSOLVER_INCLUDE})
  target_compile_options(geomfast_cuda_sm90a PRIVATE
                         $<$<COMPILE_LANGUAGE:CUDA>:-gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -lineinfo>)
  add_library(geomfast_cuda STATIC ${GF_CUDA_SOURCES} $<TARGET_OBJECTS:geomfast_cuda_sm90a>)
  target_include_directories(geomfast_cuda PUBLIC ${CMAKE_SOURCE_DIR}/csrc/include ${GF_CUBLAS_INCLUDE} ${GF_CUSOLVER_INCLUDE}
                             PRIVATE ${CMAKE_SOURCE_DIR}/csrc)
  target_compile_options(geomfast_cuda PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -lineinfo>)
  set_target_properties(geomfast_cuda PROPERTIES CUDA_SEPARABLE_COMPILATION OFF CUDA_RUNTIME_LIBRARY Static)
  target_link_libraries(geomfast_cuda PUBLIC ${GF_CUBLAS_LIB} ${GF_CUSOLVER_LIB})
  target_link_libraries(geomfast_core PUBLIC geomfast_cuda)
  target_compile_definitions(geomfast_core PUBLIC GEOMFAST_WITH_CUDA=1)
  get_filename_component(_cublas_dir "${GF_CUBLAS_LIB}" DIRECTORY)
  get_filename_component(_cusolver_dir "${GF_CUSOLVER_LIB}" DIRECTORY)
  set(GF_CUDA_RPATH "${_cublas_dir};${_cusolver_dir}")
  message(STATUS "geomfast: CUDA backend ON (archs ${CMAKE_CUDA_ARCHITECTURES}; ${GF_CUBLAS_LIB}; ${GF_CUSOLVER_LIB})")
else()
  target_sources(geomfast_core PRIVATE ${CMAKE_SOURCE_DIR}/csrc/cuda/stub.cpp)
  message(STATUS "geomfast: CUDA backend OFF (${GF_CUDA_WHY})")
endif()
target_compile_definitions(geomfast_core PUBLIC GEOMFAST_CUDA_WHY="${GF_CUDA_WHY}")
