#pragma once
// Data-parallel training over MPI (docs/distributed.md). Not part of xtr/xtr.hpp: a program that never includes this
// stays MPI-free. Link the CMake target xtr::distributed (which defines XTR_WITH_MPI and links MPI) to run on several
// processes under mpirun; without it the same code runs as one process.
#include "xtr/distributed/communicator.hpp"
#include "xtr/distributed/data_parallel.hpp"
