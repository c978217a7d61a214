# install-configured.cmake: runs at install time (cmake --install, cpack),
# when CMAKE_INSTALL_PREFIX is final (--prefix, or cpack's /usr), and
# installs the files that name absolute paths: discluster.pc and the
# systemd units. The install rule in CMakeLists.txt sets DCM_* first.
set(DCM_PREFIX "${CMAKE_INSTALL_PREFIX}")
# GNUInstallDirs' rule: /usr keeps its configuration in /etc.
if(DCM_PREFIX STREQUAL "/usr")
  set(DCM_ETCDIR "/etc/discluster")
else()
  set(DCM_ETCDIR "${DCM_PREFIX}/etc/discluster")
endif()
set(DCM_BINDIR "${DCM_PREFIX}/${DCM_BINDIR_REL}")
set(DCM_DOCDIR "${DCM_PREFIX}/${DCM_DOCDIR_REL}")
set(DCM_LIBDIR "${DCM_LIBDIR_REL}")
set(DCM_INCLUDEDIR "${DCM_INCLUDEDIR_REL}")

# A private directory per run: two installs at once do not share files.
string(RANDOM LENGTH 12 tag)
set(out "${DCM_BINARY_DIR}/install-configured-${tag}")
configure_file("${DCM_SOURCE_DIR}/packaging/discluster.pc.in" "${out}/discluster.pc" @ONLY)
configure_file("${DCM_SOURCE_DIR}/packaging/discluster-master.service.in"
               "${out}/discluster-master.service" @ONLY)
configure_file("${DCM_SOURCE_DIR}/packaging/discluster-control.service.in"
               "${out}/discluster-control.service" @ONLY)
# file(INSTALL) adds $DESTDIR and records the files in install_manifest.txt.
file(INSTALL DESTINATION "${DCM_PREFIX}/${DCM_LIBDIR}/pkgconfig" TYPE FILE
     FILES "${out}/discluster.pc")
file(INSTALL DESTINATION "${DCM_PREFIX}/lib/systemd/system" TYPE FILE
     FILES "${out}/discluster-master.service" "${out}/discluster-control.service")
file(REMOVE_RECURSE "${out}")
