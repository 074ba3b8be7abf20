// slime/version.h: the version of the kernel library, shared by CMake and setup.py builds.
#pragma once

#define SLIME_VERSION_MAJOR 0
#define SLIME_VERSION_MINOR 1
#define SLIME_VERSION_PATCH 0
#define SLIME_VERSION_STRING "0.1.0"
