# Installs xtr from a configured build tree into a fresh prefix, then configures, builds and runs tests/consumer
# against that prefix alone. Run by ctest (test consumer.find_package):
#   cmake -DXTR_BUILD_DIR=<build> -DXTR_SOURCE_DIR=<repo> -DWORK_DIR=<scratch> -DCXX=<compiler>
#         [-DGENERATOR=<generator>] [-DBUILD_TYPE=Release] -P tests/consumer/run_consumer_test.cmake
foreach(var XTR_BUILD_DIR XTR_SOURCE_DIR WORK_DIR CXX)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "xtr consumer test: ${var} is not set")
  endif()
endforeach()
if(NOT BUILD_TYPE)
  set(BUILD_TYPE Release)
endif()

set(prefix "${WORK_DIR}/prefix")
set(consumer_build "${WORK_DIR}/build")
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

function(run step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "xtr consumer test: ${step} failed (exit ${rc}):\n  ${ARGN}\n${out}")
  endif()
  set(out "${out}" PARENT_SCOPE)
endfunction()

# 1. Install.
run("install" "${CMAKE_COMMAND}" --install "${XTR_BUILD_DIR}" --prefix "${prefix}" --config "${BUILD_TYPE}")

# 2. The install tree carries every public header and the package files.
file(GLOB_RECURSE source_headers RELATIVE "${XTR_SOURCE_DIR}/include" "${XTR_SOURCE_DIR}/include/xtr/*")
file(GLOB_RECURSE installed_headers RELATIVE "${prefix}/include" "${prefix}/include/xtr/*")
list(SORT source_headers)
list(SORT installed_headers)
if(NOT source_headers STREQUAL installed_headers)
  set(missing ${source_headers})
  list(REMOVE_ITEM missing ${installed_headers})
  message(FATAL_ERROR "xtr consumer test: installed headers differ from include/; missing from the install: ${missing}")
endif()
list(LENGTH installed_headers n_headers)
foreach(file xtrConfig.cmake xtrConfigVersion.cmake xtrTargets.cmake)
  if(NOT EXISTS "${prefix}/share/xtr/cmake/${file}")
    message(FATAL_ERROR "xtr consumer test: ${prefix}/share/xtr/cmake/${file} was not installed")
  endif()
endforeach()
message(STATUS "installed ${n_headers} headers and xtrConfig/xtrConfigVersion/xtrTargets.cmake into ${prefix}")

# 3. Configure against the prefix only, build, run.
set(generator_args "")
if(GENERATOR)
  set(generator_args -G "${GENERATOR}")
endif()
run("configure" "${CMAKE_COMMAND}" -S "${XTR_SOURCE_DIR}/tests/consumer" -B "${consumer_build}" ${generator_args}
    "-DCMAKE_PREFIX_PATH=${prefix}" "-DCMAKE_CXX_COMPILER=${CXX}" "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}"
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
message(STATUS "consumer configure:\n${out}")
file(STRINGS "${consumer_build}/CMakeCache.txt" xtr_dir_line REGEX "^xtr_DIR:")
string(REGEX REPLACE "^xtr_DIR:[A-Z]+=" "" xtr_dir "${xtr_dir_line}")
file(REAL_PATH "${xtr_dir}" xtr_dir)
file(REAL_PATH "${prefix}/share/xtr/cmake" expected_dir)
if(NOT xtr_dir STREQUAL expected_dir)
  message(FATAL_ERROR "xtr consumer test: find_package(xtr) found ${xtr_dir}, not the fresh install ${expected_dir}")
endif()
run("build" "${CMAKE_COMMAND}" --build "${consumer_build}" --config "${BUILD_TYPE}")
set(app "${consumer_build}/app")
if(NOT EXISTS "${app}")
  set(app "${consumer_build}/${BUILD_TYPE}/app")  # multi-config generators
endif()
run("run" "${app}")
message(STATUS "consumer output:\n${out}")
if(NOT out MATCHES "(^|\n)OK\n")
  message(FATAL_ERROR "xtr consumer test: the consumer did not print OK")
endif()
# xtr::distributed, when the install has it and the consumer found MPI
foreach(candidate "${consumer_build}/app_distributed" "${consumer_build}/${BUILD_TYPE}/app_distributed")
  if(EXISTS "${candidate}")
    run("run app_distributed" "${candidate}")
    if(NOT out MATCHES "(^|\n)OK\n")
      message(FATAL_ERROR "xtr consumer test: app_distributed did not print OK:\n${out}")
    endif()
    message(STATUS "consumer app_distributed: OK")
    break()
  endif()
endforeach()
