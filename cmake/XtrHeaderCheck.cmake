# Every public header compiles on its own: one generated translation unit per header under include/xtr (detail/
# excluded), each including only that header (twice, so a missing include guard fails too), built as the OBJECT
# library xtr_header_check. It is part of the default build: a header that leans on an include it does not make
# breaks the build, not a later consumer.

function(xtr_add_header_check)
  set(root "${PROJECT_SOURCE_DIR}/include")
  file(GLOB_RECURSE headers CONFIGURE_DEPENDS RELATIVE "${root}" "${root}/xtr/*.hpp" "${root}/xtr/*.h")
  list(FILTER headers EXCLUDE REGEX "(^|/)detail/")
  list(SORT headers)
  set(sources "")
  foreach(header IN LISTS headers)
    string(REGEX REPLACE "[/.]" "_" stem "${header}")
    set(tu "${CMAKE_CURRENT_BINARY_DIR}/header_check/${stem}.cpp")
    # file(CONFIGURE) rewrites only on change, so re-configuring does not rebuild every check.
    file(CONFIGURE OUTPUT "${tu}" CONTENT "#include \"${header}\"\n#include \"${header}\"\n" @ONLY)
    list(APPEND sources "${tu}")
  endforeach()
  add_library(xtr_header_check OBJECT ${sources})
  target_link_libraries(xtr_header_check PRIVATE xtr::xtr xtr_project_flags)
  # nothing in these units is called, so nothing is worth optimising: -O0 (after the build type's -O3) parses the same
  # code in two thirds of the time
  target_compile_options(xtr_header_check PRIVATE -O0)
  list(LENGTH sources n)
  message(STATUS "xtr: header self-containment check over ${n} public headers (target xtr_header_check)")
endfunction()
