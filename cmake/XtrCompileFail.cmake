# Compile-fail tests: each tests/compile_fail/<case>.cpp names the diagnostic it must produce in a line
#   // expect: <static_assert message>
# and is compiled twice with -fsyntax-only: without SHOULD_FAIL it must compile, with -DSHOULD_FAIL it must fail and
# an error line of the compiler output must end with the whole expected message (plain text, not a regex).
#
# Two roles in one file:
#   include(cmake/XtrCompileFail.cmake) + xtr_add_compile_fail_tests(<dir>)  registers one ctest test per case;
#   cmake -DCASE=<case.cpp> -DCXX=<compiler> -DSTD_FLAG=-std=c++20 -DFLAGS=a|b -DINCLUDES=dir1|dir2
#         -P cmake/XtrCompileFail.cmake                                              runs one case.

if(CMAKE_SCRIPT_MODE_FILE AND CMAKE_SCRIPT_MODE_FILE STREQUAL CMAKE_CURRENT_LIST_FILE)
  foreach(var CASE CXX STD_FLAG)
    if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
      message(FATAL_ERROR "xtr compile-fail: ${var} is not set")
    endif()
  endforeach()

  file(STRINGS "${CASE}" expect_lines REGEX "^[ \t]*//[ \t]*expect:")
  list(LENGTH expect_lines n_expect)
  if(NOT n_expect EQUAL 1)
    message(FATAL_ERROR "xtr compile-fail: ${CASE} needs exactly one '// expect: <message>' line, found ${n_expect}")
  endif()
  string(REGEX REPLACE "^[ \t]*//[ \t]*expect:[ \t]*" "" expected "${expect_lines}")
  string(STRIP "${expected}" expected)
  string(REPLACE "\\;" ";" shown "${expected}")
  # Both the message and the compiler output are scanned line by line as CMake lists, where ';' separates items:
  # replace it (file(STRINGS) hands it back as '\;') by a marker on both sides.
  string(REPLACE "\\;" "<semicolon>" expected "${expected}")
  if(expected STREQUAL "")
    message(FATAL_ERROR "xtr compile-fail: the expect line of ${CASE} is empty")
  endif()

  set(command "${CXX}" ${STD_FLAG} -fsyntax-only)
  string(REPLACE "|" ";" FLAGS "${FLAGS}")        # lists arrive '|'-separated (a ';' does not survive add_test)
  string(REPLACE "|" ";" INCLUDES "${INCLUDES}")
  foreach(flag IN LISTS FLAGS)
    list(APPEND command "${flag}")
  endforeach()
  foreach(dir IN LISTS INCLUDES)
    list(APPEND command "-I${dir}")
  endforeach()

  # 1. Without SHOULD_FAIL the case is a valid program: a failure here means the case (or the library) is broken,
  #    not that the diagnostic works.
  execute_process(COMMAND ${command} "${CASE}" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "xtr compile-fail: ${CASE} does not compile WITHOUT SHOULD_FAIL (exit ${rc}); "
                        "the case must be valid code apart from the SHOULD_FAIL part.\n${out}")
  endif()

  # 2. With SHOULD_FAIL it must fail, with the expected message on an error line.
  execute_process(COMMAND ${command} -DSHOULD_FAIL "${CASE}" RESULT_VARIABLE rc OUTPUT_VARIABLE out
                  ERROR_VARIABLE out)
  if(rc EQUAL 0)
    message(FATAL_ERROR "xtr compile-fail: ${CASE} compiles WITH SHOULD_FAIL; expected the error\n  ${shown}")
  endif()
  string(REPLACE ";" "<semicolon>" escaped "${out}")
  string(REPLACE "\n" ";" lines "${escaped}")
  set(found OFF)
  set(n_errors 0)
  foreach(line IN LISTS lines)
    if(line MATCHES "error( C[0-9]+)?:")
      math(EXPR n_errors "${n_errors} + 1")
      # The whole message: the line ends with it (GCC "...: error: static assertion failed: <message>", Clang
      # "...: error: static assertion failed due to requirement '...': <message>", Clang <= 15 the same with the
      # message in double quotes), so a shortened message fails too.
      string(STRIP "${line}" line)
      string(REGEX REPLACE "\"$" "" line "${line}")
      string(FIND "${line}" "${expected}" at REVERSE)
      string(LENGTH "${line}" line_length)
      string(LENGTH "${expected}" expected_length)
      math(EXPR tail_at "${line_length} - ${expected_length}")
      if(NOT at EQUAL -1 AND at EQUAL tail_at)
        set(found ON)
      endif()
    endif()
  endforeach()
  if(NOT found)
    string(SUBSTRING "${out}" 0 8000 head)  # enough to see the first errors; a wall of text is a finding by itself
    message(FATAL_ERROR "xtr compile-fail: ${CASE} fails WITH SHOULD_FAIL, but no error line ends with the expected "
                        "message\n  ${shown}\ncompiler output (first 8000 characters):\n${head}")
  endif()
  message(STATUS "xtr compile-fail: ${CASE}: compiles without SHOULD_FAIL; with it fails with the expected message "
                 "(${n_errors} error line(s))")
  return()
endif()

# Registers one test per tests/compile_fail/*.cpp, named compile_fail.<case>, label compile_fail. The flags are the
# ones a consumer of xtr::xtr gets: the C++20 option, OpenMP, and the include directories of xtr, Eigen, Boost, zlib.
function(xtr_add_compile_fail_tests dir)
  file(GLOB cases CONFIGURE_DEPENDS "${dir}/*.cpp")
  get_target_property(eigen_includes Eigen3::Eigen INTERFACE_INCLUDE_DIRECTORIES)
  get_target_property(boost_includes Boost::headers INTERFACE_INCLUDE_DIRECTORIES)
  set(includes "${PROJECT_SOURCE_DIR}/include" ${eigen_includes} ${boost_includes} ${ZLIB_INCLUDE_DIRS})
  list(REMOVE_DUPLICATES includes)
  list(FILTER includes EXCLUDE REGEX "-NOTFOUND$")
  string(REPLACE " " ";" openmp_flags "${OpenMP_CXX_FLAGS}")
  string(REPLACE ";" "|" includes_arg "${includes}")
  string(REPLACE ";" "|" flags_arg "${openmp_flags}")
  foreach(case IN LISTS cases)
    get_filename_component(name "${case}" NAME_WE)
    add_test(NAME compile_fail.${name}
             COMMAND ${CMAKE_COMMAND}
                     "-DCASE=${case}"
                     "-DCXX=${CMAKE_CXX_COMPILER}"
                     "-DSTD_FLAG=${CMAKE_CXX20_STANDARD_COMPILE_OPTION}"
                     "-DFLAGS=${flags_arg}"
                     "-DINCLUDES=${includes_arg}"
                     -P "${PROJECT_SOURCE_DIR}/cmake/XtrCompileFail.cmake")
    set_tests_properties(compile_fail.${name} PROPERTIES LABELS compile_fail)
  endforeach()
endfunction()
