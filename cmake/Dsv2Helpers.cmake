# dsv2_cc_library(NAME name [SRCS ...] [HDRS ...] [DEPS ...] [COPTS ...])
#   Defines the library dsv2_<name> and its alias dsv2::<name>. Headers are
#   included by their path from the repository root.
# dsv2_cc_test(NAME name SRCS ... [DEPS ...] [LABELS ...] [TIMEOUT seconds]
#              [TEST_PREFIX prefix])
#   Defines a GoogleTest binary and registers each of its tests with ctest
#   (named TEST_PREFIX + Suite.Test). Tests run from the repository root, so
#   fixtures are named by their path. TIMEOUT bounds each test, for suites
#   where a regression would block (a FIFO opened for reading) rather than
#   fail.
# dsv2_fuzz_target(NAME name SRCS ... [DEPS ...])
#   A fuzz target (common/fuzz/fuzz_target.h; docs/fuzzing.md): the library
#   dsv2::<name>_fuzz_target from SRCS; the test <name>_fuzz_regression_test,
#   which replays <name>/seeds and <name>/regressions beside the calling
#   CMakeLists.txt; and, with DSV2_BUILD_FUZZERS (clang), the libFuzzer
#   binary <name>_fuzzer, listed in <build>/fuzz_targets.txt for
#   scripts/fuzz.sh.

function(dsv2_cc_library)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;HDRS;DEPS;COPTS" ${ARGN})
  set(_target dsv2_${ARG_NAME})
  if(ARG_SRCS)
    add_library(${_target} STATIC ${ARG_SRCS} ${ARG_HDRS})
    target_include_directories(${_target} PUBLIC ${PROJECT_SOURCE_DIR})
    target_link_libraries(${_target} PUBLIC ${ARG_DEPS})
    target_compile_options(${_target} PRIVATE ${ARG_COPTS})
  else()
    add_library(${_target} INTERFACE ${ARG_HDRS})
    target_include_directories(${_target} INTERFACE ${PROJECT_SOURCE_DIR})
    target_link_libraries(${_target} INTERFACE ${ARG_DEPS})
  endif()
  add_library(dsv2::${ARG_NAME} ALIAS ${_target})
endfunction()

function(dsv2_cc_test)
  if(NOT DSV2_BUILD_TESTS)
    return()
  endif()
  cmake_parse_arguments(ARG "" "NAME;TIMEOUT;TEST_PREFIX" "SRCS;DEPS;LABELS" ${ARGN})
  add_executable(${ARG_NAME} ${ARG_SRCS})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS} GTest::gtest GTest::gmock GTest::gtest_main)
  # Tests include shared test code by its path from the root (tests/...).
  target_include_directories(${ARG_NAME} PRIVATE ${PROJECT_SOURCE_DIR})
  # (An empty value would be dropped from the list and shift the others.)
  set(_properties)
  if(ARG_LABELS)
    list(APPEND _properties LABELS "${ARG_LABELS}")
  endif()
  if(ARG_TIMEOUT)
    list(APPEND _properties TIMEOUT ${ARG_TIMEOUT})
  endif()
  if(_properties)
    set(_properties PROPERTIES ${_properties})
  endif()
  gtest_discover_tests(${ARG_NAME}
    WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
    TEST_PREFIX "${ARG_TEST_PREFIX}"
    ${_properties}
    DISCOVERY_TIMEOUT 60)
endfunction()

function(dsv2_fuzz_target)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;DEPS" ${ARGN})
  set(_library ${ARG_NAME}_fuzz_target)
  set(_harness ${PROJECT_SOURCE_DIR}/common/fuzz)
  dsv2_cc_library(NAME ${_library} SRCS ${ARG_SRCS} HDRS ${_harness}/fuzz_target.h DEPS ${ARG_DEPS})
  file(RELATIVE_PATH _corpus ${PROJECT_SOURCE_DIR} ${CMAKE_CURRENT_SOURCE_DIR}/${ARG_NAME})
  dsv2_cc_test(
    NAME ${ARG_NAME}_fuzz_regression_test
    SRCS ${_harness}/replay_test.cc
    DEPS dsv2::${_library}
    TIMEOUT 300
    TEST_PREFIX "${ARG_NAME}/")
  if(DSV2_BUILD_TESTS)
    target_compile_definitions(${ARG_NAME}_fuzz_regression_test PRIVATE
                               DSV2_FUZZ_CORPUS="${_corpus}")
  endif()
  if(DSV2_BUILD_FUZZERS)
    add_executable(${ARG_NAME}_fuzzer ${_harness}/libfuzzer_main.cc)
    target_link_libraries(${ARG_NAME}_fuzzer PRIVATE dsv2::${_library})
    target_link_options(${ARG_NAME}_fuzzer PRIVATE -fsanitize=fuzzer)
    set_property(GLOBAL APPEND PROPERTY DSV2_FUZZERS
                 "${ARG_NAME} ${_corpus} $<TARGET_FILE:${ARG_NAME}_fuzzer>")
  endif()
endfunction()
