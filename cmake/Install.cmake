# What `cmake --install` (and so the Debian package) puts where, following
# GNUInstallDirs: the programs, the versioned shared libraries and static
# archives, the public headers only (the proxy-side API and winsock.h; the
# control plane's internals stay private), pkg-config files, a CMake package
# (find_package(connredir) -> connredir::connredir, connredir::winsock), man
# pages generated from the programs' own --help, and the docs.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

# `connredir` needs root (it loads BPF programs): sbin, as Debian does for
# administration tools. connredir-proxy runs as an unprivileged principal: bin.
install(TARGETS connredir_cli RUNTIME DESTINATION ${CMAKE_INSTALL_SBINDIR} COMPONENT runtime)
install(TARGETS connredir_proxy RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT runtime)

install(TARGETS connredir_shared connredir_winsock_shared EXPORT connredirTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT library
          NAMELINK_COMPONENT development)
install(TARGETS connredir_client connredir_winsock
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT development)

set(CONNREDIR_PUBLIC_HEADERS
  ${PROJECT_SOURCE_DIR}/include/connredir/address.hpp
  ${PROJECT_SOURCE_DIR}/include/connredir/client.hpp
  ${PROJECT_SOURCE_DIR}/include/connredir/error.hpp
  ${PROJECT_SOURCE_DIR}/include/connredir/records.hpp
  ${PROJECT_SOURCE_DIR}/include/connredir/winsock.h
  # Included as "connredir_abi.h" by address.hpp: found next to it once installed.
  ${CONNREDIR_ABI_DIR}/connredir_abi.h)
foreach(h connredir.h export.h)
  if(EXISTS ${PROJECT_SOURCE_DIR}/include/connredir/${h})
    list(APPEND CONNREDIR_PUBLIC_HEADERS ${PROJECT_SOURCE_DIR}/include/connredir/${h})
  endif()
endforeach()
install(FILES ${CONNREDIR_PUBLIC_HEADERS}
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/connredir COMPONENT development)

# pkg-config: shared by default; `pkg-config --static` adds what the static
# archives need (fmt, threads).
foreach(pc connredir connredir-winsock)
  configure_file(${PROJECT_SOURCE_DIR}/packaging/${pc}.pc.in ${CMAKE_BINARY_DIR}/${pc}.pc @ONLY)
  install(FILES ${CMAKE_BINARY_DIR}/${pc}.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig
          COMPONENT development)
endforeach()

set(CONNREDIR_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/connredir)
install(EXPORT connredirTargets NAMESPACE connredir:: DESTINATION ${CONNREDIR_CMAKE_DIR}
        COMPONENT development)
configure_package_config_file(${PROJECT_SOURCE_DIR}/packaging/connredirConfig.cmake.in
                              ${CMAKE_BINARY_DIR}/connredirConfig.cmake
                              INSTALL_DESTINATION ${CONNREDIR_CMAKE_DIR})
write_basic_package_version_file(${CMAKE_BINARY_DIR}/connredirConfigVersion.cmake
                                 COMPATIBILITY SameMajorVersion)
install(FILES ${CMAKE_BINARY_DIR}/connredirConfig.cmake
              ${CMAKE_BINARY_DIR}/connredirConfigVersion.cmake
        DESTINATION ${CONNREDIR_CMAKE_DIR} COMPONENT development)

# Man pages from each program's --help (help2man), so they never drift from it.
find_program(HELP2MAN help2man)
if(HELP2MAN)
  set(man_dir ${CMAKE_BINARY_DIR}/man)
  add_custom_command(
    OUTPUT ${man_dir}/connredir.8
    COMMAND ${CMAKE_COMMAND} -E make_directory ${man_dir}
    COMMAND ${HELP2MAN} --no-info --no-discard-stderr --section=8 --version-string=${PROJECT_VERSION}
            --name=connection\ redirection\ with\ proxy-chain\ tracking
            --include=${PROJECT_SOURCE_DIR}/packaging/connredir.h2m
            --output=${man_dir}/connredir.8 $<TARGET_FILE:connredir_cli>
    DEPENDS connredir_cli ${PROJECT_SOURCE_DIR}/packaging/connredir.h2m
    VERBATIM)
  add_custom_command(
    OUTPUT ${man_dir}/connredir-proxy.1
    COMMAND ${CMAKE_COMMAND} -E make_directory ${man_dir}
    COMMAND ${HELP2MAN} --no-info --no-discard-stderr --section=1 --version-string=${PROJECT_VERSION}
            --name=reference\ inspection\ proxy\ for\ connredir
            --include=${PROJECT_SOURCE_DIR}/packaging/connredir-proxy.h2m
            --output=${man_dir}/connredir-proxy.1 $<TARGET_FILE:connredir_proxy>
    DEPENDS connredir_proxy ${PROJECT_SOURCE_DIR}/packaging/connredir-proxy.h2m
    VERBATIM)
  add_custom_target(man ALL DEPENDS ${man_dir}/connredir.8 ${man_dir}/connredir-proxy.1)
  install(FILES ${man_dir}/connredir.8 DESTINATION ${CMAKE_INSTALL_MANDIR}/man8 COMPONENT runtime)
  install(FILES ${man_dir}/connredir-proxy.1 DESTINATION ${CMAKE_INSTALL_MANDIR}/man1
          COMPONENT runtime)
else()
  message(STATUS "help2man not found: man pages are not built (apt install help2man)")
endif()

install(FILES ${PROJECT_SOURCE_DIR}/README.md DESTINATION ${CMAKE_INSTALL_DOCDIR} COMPONENT runtime)
install(DIRECTORY ${PROJECT_SOURCE_DIR}/docs/ DESTINATION ${CMAKE_INSTALL_DOCDIR} COMPONENT runtime
        FILES_MATCHING PATTERN "*.md")
if(EXISTS ${PROJECT_SOURCE_DIR}/examples)
  install(DIRECTORY ${PROJECT_SOURCE_DIR}/examples/ DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples
          COMPONENT development REGEX "examples/CMakeLists.txt$" EXCLUDE)
endif()

# systemd units (docs/SERVICE.md): connredir.service applies /etc/connredir at
# boot; connredir-proxy@.service runs a proxy as its principal in
# connredir.slice. Debian 12's debhelper and systemd look in /lib/systemd/system
# (debian/rules passes it); elsewhere PREFIX/lib/systemd/system.
set(CONNREDIR_SYSTEMD_UNIT_DIR "${CMAKE_INSTALL_PREFIX}/lib/systemd/system" CACHE PATH
    "where the systemd units are installed")
set(CONNREDIR_SBINDIR ${CMAKE_INSTALL_FULL_SBINDIR})
set(CONNREDIR_BINDIR ${CMAKE_INSTALL_FULL_BINDIR})
set(CONNREDIR_DOCDIR ${CMAKE_INSTALL_FULL_DOCDIR})
foreach(unit connredir.service connredir-proxy@.service connredir.slice)
  configure_file(${PROJECT_SOURCE_DIR}/packaging/systemd/${unit}.in
                 ${CMAKE_BINARY_DIR}/systemd/${unit} @ONLY)
  install(FILES ${CMAKE_BINARY_DIR}/systemd/${unit} DESTINATION ${CONNREDIR_SYSTEMD_UNIT_DIR}
          COMPONENT runtime)
endforeach()
# The global configuration (a conffile in the package: no callouts, applying it
# redirects nothing) and the empty drop-in directories: conf.d/ for the
# vendors' *.toml, proxy/ for the connredir-proxy@NAME instances' NAME.conf.
install(FILES ${PROJECT_SOURCE_DIR}/packaging/connredir.toml
        DESTINATION ${CMAKE_INSTALL_FULL_SYSCONFDIR}/connredir COMPONENT runtime)
install(DIRECTORY DESTINATION ${CMAKE_INSTALL_FULL_SYSCONFDIR}/connredir/conf.d COMPONENT runtime)
install(DIRECTORY DESTINATION ${CMAKE_INSTALL_FULL_SYSCONFDIR}/connredir/proxy COMPONENT runtime)
