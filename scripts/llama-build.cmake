# Included by llama-cpp-python's top-level project() (CMAKE_PROJECT_llama_cpp_INCLUDE, see scripts/setup).
# llama-cpp-python forces llama.cpp's "common" library on with a cache entry, yet its Python bindings
# never load it; a normal variable shadows that cache entry (policy CMP0126), so the build skips about a
# third of its compile units.
set(LLAMA_BUILD_COMMON OFF)
