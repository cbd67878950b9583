// Kernel launches through one macro, so that the CUDA backend's host code can also run on a CPU
// under tests/cuda_emulation (GEOMFAST_CUDA_EMULATE_HOST), where `<<<>>>` does not exist:
//   GF_LAUNCH((kernel), (grid, block, shared_bytes, stream), (args...));
// GF_LAUNCH_SYNC is the same for kernels with __syncthreads()/__syncwarp(): the emulation then
// runs a CTA's threads concurrently (without them, one after another).
#pragma once

#define GF_UNPAREN(...) __VA_ARGS__

#if defined(GEOMFAST_CUDA_EMULATE)
#define GF_LAUNCH(kernel, config, args) \
  ::gf_emu::launch_config(false, GF_UNPAREN config, [&] { GF_UNPAREN kernel args; })
#define GF_LAUNCH_SYNC(kernel, config, args) \
  ::gf_emu::launch_config(true, GF_UNPAREN config, [&] { GF_UNPAREN kernel args; })
#else
#define GF_LAUNCH(kernel, config, args) GF_UNPAREN kernel<<<GF_UNPAREN config>>> args
#define GF_LAUNCH_SYNC GF_LAUNCH
#endif
