#include "harness_load.hpp"
