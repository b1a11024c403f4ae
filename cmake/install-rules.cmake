include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(KVCACHE_CMAKE_DIR "${CMAKE_INSTALL_DATADIR}/cmake/kvcache" CACHE STRING "Where kvcacheConfig.cmake is installed")

install(DIRECTORY include/kvcache DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")
install(TARGETS kvcache_kvcache EXPORT kvcacheTargets INCLUDES DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")
install(EXPORT kvcacheTargets NAMESPACE kvcache:: DESTINATION "${KVCACHE_CMAKE_DIR}")

configure_package_config_file(cmake/kvcacheConfig.cmake.in "${PROJECT_BINARY_DIR}/kvcacheConfig.cmake"
                              INSTALL_DESTINATION "${KVCACHE_CMAKE_DIR}")
write_basic_package_version_file("${PROJECT_BINARY_DIR}/kvcacheConfigVersion.cmake"
                                 COMPATIBILITY SameMajorVersion ARCH_INDEPENDENT)
install(FILES "${PROJECT_BINARY_DIR}/kvcacheConfig.cmake" "${PROJECT_BINARY_DIR}/kvcacheConfigVersion.cmake"
        DESTINATION "${KVCACHE_CMAKE_DIR}")
