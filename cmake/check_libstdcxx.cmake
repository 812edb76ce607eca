# Post-build check (cmake -P): golf._C must load the C++ runtime that torch loads, libstdc++.so.6.
# A compiler that links libstdc++ statically (some toolchains under /opt) gives the extension a private copy
# whose locale state torch never initialised: the first error message that formats a number then crashes
# the process instead of raising. Usage: cmake -DSO=<file> -DREADELF=<readelf> -DCXX=<compiler> -P this-file
execute_process(COMMAND "${READELF}" -d "${SO}" OUTPUT_VARIABLE _dyn RESULT_VARIABLE _rc)
if(NOT _rc EQUAL 0)
  message(WARNING "golf: cannot read ${SO} with ${READELF}; libstdc++ linkage not checked")
elseif(NOT _dyn MATCHES "libstdc\\+\\+\\.so")
  file(REMOVE "${SO}")
  message(FATAL_ERROR "golf: ${SO} does not load libstdc++.so.6: it was linked with a static C++ runtime "
                      "(compiler ${CXX}, or its flags), and such an extension crashes on its first error message. "
                      "Build with a compiler that links it dynamically, e.g. CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++.")
endif()
