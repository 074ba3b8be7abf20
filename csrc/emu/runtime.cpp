// runtime.cpp: the scheduler, the checks and the runtime API of the CUDA emulation
// (csrc/emu/include/emu_cuda.h; csrc/emu/README.md says what it models and what not).
//
// A launch runs its blocks one after another. The threads of a block are fibers on one OS
// thread with their own stacks; a fiber runs until it reaches __syncthreads, a warp
// intrinsic or its end, then the next ready fiber runs. When no fiber is ready the block
// barrier is released if every live thread waits at it; anything else (threads at different
// barriers, threads that exited while others wait, lanes waiting for lanes that never come)
// is reported as a finding and the block is abandoned, never hung.
//
// Memory checks: kernels are compiled with g++'s thread sanitizer instrumentation, so each
// load and store calls __tsan_{read,write}N below (the TSan runtime is not linked). An
// address in the TLS segment (where every
// __shared__ array lives) goes to the shared-memory checker, any other address to
// AddressSanitizer's shadow, which reports heap overflows and use-after-free on device
// buffers exactly as for host code.
#include <link.h>
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#include <sys/mman.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "emu_cuda.h"

#if !defined(__x86_64__)
#error "the CUDA emulation's fiber switch is written for x86-64"
#endif

namespace emu {
namespace {

// ---- the kernels' extern __shared__ arrays -------------------------------------------------
// g++ gives a block-scope `extern thread_local` inside an anonymous namespace external
// linkage, so each kernel file's `extern __shared__ ... smem[]` refers to the symbol below
// of its namespace. A kernel that names its array differently fails to link, naming it.
constexpr size_t kDynamicMax = 232448;  // sm_90's 227 KiB opt-in limit
}  // namespace
}  // namespace emu

alignas(128) thread_local unsigned char emu_smem_slime[emu::kDynamicMax]
    asm("_ZN5slime12_GLOBAL__N_14smemE");
alignas(128) thread_local unsigned char emu_smem_slime_cuda[emu::kDynamicMax]
    asm("_ZN5slime4cuda12_GLOBAL__N_14smemE");
// The same g++ treatment makes such a translation unit call its TLS initialiser, which it
// never emits; the arrays need none.
extern "C" void __tls_init() {}

// x86-64 System V context switch: saves the callee-saved registers on the current stack,
// stores the stack pointer in *from, continues on `to`.
extern "C" void emu_switch_context(void** from, void* to);
asm(R"(
.text
.globl emu_switch_context
.type emu_switch_context, @function
emu_switch_context:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size emu_switch_context, .-emu_switch_context
)");

namespace emu {

const uint3* g_thread_idx = nullptr;
uint3 g_block_idx;
dim3 g_block_dim, g_grid_dim;

namespace {

constexpr int kMaxThreads = 1024;
constexpr size_t kStack = 256 * 1024;
constexpr size_t kGuard = 4096;

enum class State { Ready, AtBarrier, AtWarp, Done };

struct Fiber {
  void* sp = nullptr;
  char* stack = nullptr;
  uint3 idx{};
  int linear = 0, warp = 0, lane = 0;
  State state = State::Done;
  const char* file = nullptr;  // where it waits
  int line = 0;
  WarpArrival arrival{};
};

struct Block {
  std::vector<Fiber> fibers;
  Fiber* current = nullptr;
  void* main_sp = nullptr;
  const void* main_stack_bottom = nullptr;
  size_t main_stack_size = 0;
  const void* kernel = nullptr;
  Thunk thunk = nullptr;
  void* args = nullptr;
  int nthreads = 0;
  uint32_t epoch = 0;                // block barriers passed
  std::vector<uint32_t> warp_epoch;  // __syncwarp()s completed, per warp
  bool aborted = false;
};
Block g;

// ---- findings ----
struct Site {
  Finding kind;
  std::string where;
  bool operator<(const Site& o) const {
    return kind != o.kind ? kind < o.kind : where < o.where;
  }
};
std::set<Site> g_sites;
int g_counts[static_cast<int>(Finding::Count)];
cudaError_t g_last_error = cudaSuccess;
int g_arch = 0;
std::map<const void*, int> g_dynamic_limit;  // cudaFuncAttributeMaxDynamicSharedMemorySize
size_t g_dynamic_bytes = 0;                 // of the running launch
const char* g_kernel_name = "";

std::string symbolize(const void* pc) {
  char buf[512];
  // A hook's return address is just past its call: step back into the call.
  __sanitizer_symbolize_pc(static_cast<char*>(const_cast<void*>(pc)) - 1, "%s:%l (%f)", buf,
                           sizeof(buf));
  return buf;
}

void add_finding(Finding kind, const std::string& where, const std::string& what) {
  if (!g_sites.insert({kind, where}).second) return;
  ++g_counts[static_cast<int>(kind)];
  std::fprintf(stderr, "emu: [%s] %s\n  at %s\n  in %s, block (%u,%u,%u)\n", finding_name(kind),
               what.c_str(), where.c_str(), g_kernel_name, g_block_idx.x, g_block_idx.y,
               g_block_idx.z);
}

std::string site(const char* file, int line) {
  return file ? std::string(file) + ":" + std::to_string(line) : std::string("(warp op)");
}

std::string fmt(const char* f, va_list ap) {
  char buf[512];
  std::vsnprintf(buf, sizeof(buf), f, ap);
  return buf;
}

std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char* f, ...) {
  va_list ap;
  va_start(ap, f);
  std::string s = fmt(f, ap);
  va_end(ap);
  return s;
}

// ---- fibers ----
char* g_stacks = nullptr;

void switch_to_main(Fiber& f) {
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, g.main_stack_bottom, g.main_stack_size);
  emu_switch_context(&f.sp, g.main_sp);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
}

void wake_waiters_of_exited(Fiber& f);

[[noreturn]] void fiber_entry() {
  __sanitizer_finish_switch_fiber(nullptr, &g.main_stack_bottom, &g.main_stack_size);
  Fiber& f = *g.current;
  g.thunk(g.kernel, g.args);
  f.state = State::Done;
  wake_waiters_of_exited(f);
  __sanitizer_start_switch_fiber(nullptr, g.main_stack_bottom, g.main_stack_size);
  emu_switch_context(&f.sp, g.main_sp);
  __builtin_unreachable();
}

void start_fiber(Fiber& f) {
  uintptr_t* sp = reinterpret_cast<uintptr_t*>(f.stack + kStack - kGuard);
  *--sp = 0;  // the entry's return address slot: entered with rsp % 16 == 8, as after a call
  *--sp = reinterpret_cast<uintptr_t>(&fiber_entry);
  for (int i = 0; i < 6; ++i) *--sp = 0;  // rbp rbx r12-r15
  f.sp = sp;
}

void resume(Fiber& f) {
  g.current = &f;
  g_thread_idx = &f.idx;
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack + kGuard, kStack - 2 * kGuard);
  emu_switch_context(&g.main_sp, f.sp);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
}

// ---- warp operations ----
void try_complete(int warp);

const char* op_name(WarpOpKind k) {
  switch (k) {
    case kSyncWarp: return "__syncwarp";
    case kShuffle: return "a shuffle";
    case kWmmaLoad: return "wmma::load_matrix_sync";
    case kWmmaStore: return "wmma::store_matrix_sync";
    case kWmmaMma: return "wmma::mma_sync";
  }
  return "?";
}

int lanes_in_warp(int warp) {
  const int n = g.nthreads - warp * 32;
  return n < 32 ? n : 32;
}

void try_complete(int warp) {
  Fiber* lanes = &g.fibers[static_cast<size_t>(warp) * 32];
  const int n = lanes_in_warp(warp);
  // The first waiting lane decides which operation is completing.
  int first = -1;
  for (int l = 0; l < n && first < 0; ++l)
    if (lanes[l].state == State::AtWarp) first = l;
  if (first < 0) return;
  const WarpArrival& a = lanes[first].arrival;
  for (int l = 0; l < n; ++l) {
    if (!(a.mask >> l & 1u)) continue;
    const Fiber& o = lanes[l];
    if (o.state != State::AtWarp) return;  // not there yet (the deadlock check catches "never")
    if (o.arrival.kind != a.kind || o.arrival.mask != a.mask || o.arrival.key != a.key) {
      add_finding(Finding::WarpMask, site(o.file, o.line),
                  fmt("lane %d waits at %s (mask 0x%08x) while lane %d waits at %s (mask 0x%08x) "
                      "at %s",
                      l, op_name(o.arrival.kind), o.arrival.mask, first, op_name(a.kind), a.mask,
                      site(a.file, a.line).c_str()));
      return;
    }
  }
  if (a.complete) {
    void* payloads[32] = {};
    for (int l = 0; l < n; ++l)
      if (a.mask >> l & 1u) payloads[l] = lanes[l].arrival.payload;
    a.complete(payloads, a.mask);
  }
  if (a.kind == kSyncWarp) ++g.warp_epoch[static_cast<size_t>(warp)];
  const unsigned mask = a.mask;
  for (int l = 0; l < n; ++l)
    if (mask >> l & 1u) lanes[l].state = State::Ready;
}

void wake_waiters_of_exited(Fiber& f) {
  Fiber* lanes = &g.fibers[static_cast<size_t>(f.warp) * 32];
  const int n = lanes_in_warp(f.warp);
  bool changed = false;
  for (int l = 0; l < n; ++l) {
    Fiber& o = lanes[l];
    if (o.state == State::AtWarp && (o.arrival.mask >> f.lane & 1u)) {
      add_finding(Finding::WarpMask, site(o.file, o.line),
                  fmt("lane %d waits at %s for lane %d, which exited", o.lane,
                      op_name(o.arrival.kind), f.lane));
      o.arrival.mask &= ~(1u << f.lane);
      changed = true;
    }
  }
  if (changed) try_complete(f.warp);
}

// ---- shared memory shadow ----
uintptr_t g_tls_lo = 0, g_tls_size = 0;
constexpr uint16_t kNone = 0xffff;
struct Cell {
  uint32_t gen;     // block run that last touched it; older means uninitialised, no history
  uint32_t epoch;   // barrier interval of the history below
  uint16_t writer;  // last writer in this interval, or kNone
  uint16_t reader;  // a reader at the highest warp epoch seen, or kNone
  uint16_t wws;     // writer's warp epoch
  uint16_t rws;     // highest warp epoch among readers
  uint8_t init;
  uint8_t readers_many;  // more than one reader at rws
  uint8_t readers_warps;  // readers from more than one warp
  uint8_t pad;
};
std::vector<Cell> g_shadow;
Cell* g_cells = nullptr;  // g_shadow.data(): the hot path uses plain pointers
uint32_t* g_warp_epoch = nullptr;
uint32_t g_gen = 0;
size_t g_asan_scale = 3, g_asan_offset = 0;
bool g_in_block = false;

int tls_phdr(dl_phdr_info* info, size_t, void*) {
  for (int i = 0; i < info->dlpi_phnum; ++i)
    if (info->dlpi_phdr[i].p_type == PT_TLS) {
      g_tls_lo = reinterpret_cast<uintptr_t>(info->dlpi_tls_data);
      g_tls_size = info->dlpi_phdr[i].p_memsz;
    }
  return 1;  // the first object is the executable
}

// The hot path (every shared access of every thread) runs without the sanitizers' own checks.
#define EMU_HOT __attribute__((no_sanitize("address", "undefined")))

EMU_HOT bool unordered(uint16_t other, uint16_t other_ws, const Fiber& f) {
  if (other == f.linear) return false;
  return other / 32 != f.warp || other_ws == g_warp_epoch[f.warp];
}

EMU_HOT void shared_access(uintptr_t addr, size_t n, bool write, const void* pc) {
  Fiber& f = *g.current;
  const uintptr_t off = addr - g_tls_lo;
  for (int k = 0; k < 2; ++k) {
    const uintptr_t d = reinterpret_cast<uintptr_t>(k ? emu_smem_slime_cuda : emu_smem_slime);
    if (addr >= d && addr < d + kDynamicMax && addr + n > d + g_dynamic_bytes) {
      add_finding(Finding::SharedOutOfBounds, symbolize(pc),
                  fmt("thread %d %s %zu bytes at dynamic shared offset %zu, launched with %zu",
                      f.linear, write ? "writes" : "reads", n, size_t(addr - d), g_dynamic_bytes));
      return;
    }
  }
  const uint16_t ws = static_cast<uint16_t>(g_warp_epoch[f.warp]);
  bool reported = false;
  for (size_t i = 0; i < n && off + i < g_tls_size; ++i) {
    Cell& c = g_cells[off + i];
    if (c.gen != g_gen) c = Cell{g_gen, g.epoch, kNone, kNone, 0, 0, 0, 0, 0, 0};
    if (c.epoch != g.epoch) {
      const uint8_t init = c.init;
      c = Cell{g_gen, g.epoch, kNone, kNone, 0, 0, init, 0, 0, 0};
    }
    if (!write && !c.init && !reported) {
      add_finding(Finding::SharedUninit, symbolize(pc),
                  fmt("thread %d reads shared byte +%zu that no thread of this block wrote",
                      f.linear, size_t(off + i)));
      reported = true;  // the read still counts for the race check
    }
    if (c.writer != kNone && unordered(c.writer, c.wws, f)) {
      add_finding(Finding::SharedRace, symbolize(pc),
                  fmt("%s hazard: thread %d %s shared byte +%zu that thread %d wrote since the "
                      "last barrier",
                      write ? "write-after-write" : "read-after-write", f.linear,
                      write ? "writes" : "reads", size_t(off + i), c.writer));
      return;
    }
    if (write && c.reader != kNone) {
      const bool race = c.readers_warps || c.reader / 32 != f.warp ||
                        (c.rws == ws && (c.readers_many || c.reader != f.linear));
      if (race) {
        add_finding(Finding::SharedRace, symbolize(pc),
                    fmt("write-after-read hazard: thread %d writes shared byte +%zu that thread "
                        "%d read since the last barrier",
                        f.linear, size_t(off + i), c.reader));
        return;
      }
    }
    if (write) {
      c.writer = static_cast<uint16_t>(f.linear), c.wws = ws, c.init = 1;
    } else if (c.reader == kNone) {
      c.reader = static_cast<uint16_t>(f.linear), c.rws = ws;
    } else {
      if (c.reader / 32 != f.warp) c.readers_warps = 1;
      if (ws > c.rws) {
        c.rws = ws, c.reader = static_cast<uint16_t>(f.linear), c.readers_many = 0;
      } else if (c.reader != f.linear) {
        c.readers_many = 1;
      }
    }
  }
}

EMU_HOT inline void check(const void* p, size_t n, bool write, const void* pc) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (g_in_block && a - g_tls_lo < g_tls_size) {
    shared_access(a, n, write, pc);
    return;
  }
  // ASan's shadow byte of an access within one 8-byte granule, read directly (the common
  // case); anything else through the runtime.
  if ((a & 7) + n <= 8) {
    const int8_t sh = *reinterpret_cast<const int8_t*>((a >> g_asan_scale) + g_asan_offset);
    if (sh == 0 || static_cast<int>((a & 7) + n - 1) < sh) return;
  }
  if (__asan_region_is_poisoned(const_cast<void*>(p), n))
    __asan_report_error(const_cast<void*>(pc), __builtin_frame_address(0),
                        __builtin_frame_address(0), const_cast<void*>(p), write, n);
}

// ---- blocks ----
void abandon_block() {
  for (Fiber& f : g.fibers) {
    if (f.state != State::Done) {
      f.state = State::Done;
      // Its frames never return: clear what ASan poisoned on that stack.
      __asan_unpoison_memory_region(f.stack + kGuard, kStack - 2 * kGuard);
    }
  }
  g.aborted = true;
}

// No fiber is ready: release the barrier, or report why the block cannot go on.
void resolve() {
  std::map<std::string, int> at_barrier;
  int waiting = 0, exited = 0, at_warp = 0;
  for (const Fiber& f : g.fibers) {
    if (f.state == State::AtBarrier) ++at_barrier[site(f.file, f.line)], ++waiting;
    if (f.state == State::AtWarp) ++at_warp;
    if (f.state == State::Done) ++exited;
  }
  if (at_warp == 0 && waiting > 0) {
    if (at_barrier.size() > 1) {
      std::string what = "threads wait at different barriers:";
      for (const auto& b : at_barrier) what += fmt(" %d at %s;", b.second, b.first.c_str());
      add_finding(Finding::BarrierDivergence, at_barrier.begin()->first, what);
    } else if (exited > 0) {
      add_finding(Finding::BarrierDivergence, at_barrier.begin()->first,
                  fmt("%d threads wait at this __syncthreads; %d threads of the block exited "
                      "without reaching it",
                      waiting, exited));
    }
    ++g.epoch;
    for (Fiber& f : g.fibers)
      if (f.state == State::AtBarrier) f.state = State::Ready;
    return;
  }
  // Lanes wait at warp operations for lanes that wait elsewhere: on a GPU this hangs.
  for (const Fiber& f : g.fibers) {
    if (f.state != State::AtWarp) continue;
    const bool barrier = waiting > 0;
    add_finding(barrier ? Finding::BarrierDivergence : Finding::WarpMask, site(f.file, f.line),
                fmt("deadlock: lane %d of warp %d waits at %s (mask 0x%08x) while %d threads "
                    "wait at __syncthreads",
                    f.lane, f.warp, op_name(f.arrival.kind), f.arrival.mask, waiting));
    break;
  }
  abandon_block();
}

void run_block() {
  ++g_gen;
  g.epoch = 0;
  g.aborted = false;
  std::fill(g.warp_epoch.begin(), g.warp_epoch.end(), 0u);
  for (int t = 0; t < g.nthreads; ++t) {
    Fiber& f = g.fibers[static_cast<size_t>(t)];
    f.state = State::Ready;
    start_fiber(f);
  }
  for (;;) {
    bool ran = false, live = false;
    for (Fiber& f : g.fibers) {
      if (f.state == State::Ready) resume(f), ran = true;
      live = live || f.state != State::Done;
    }
    if (!live) return;
    if (!ran) resolve();
  }
}

}  // namespace

// ---- device side ----
int lane_id() { return g.current->lane; }

void syncthreads(const char* file, int line) {
  Fiber& f = *g.current;
  f.state = State::AtBarrier, f.file = file, f.line = line;
  switch_to_main(f);
}

void warp_op_unfenced(const WarpArrival& in) {
  Fiber& f = *g.current;
  WarpArrival a = in;
  const int n = lanes_in_warp(f.warp);
  const unsigned present = n == 32 ? 0xffffffffu : (1u << n) - 1u;
  if (!(a.mask >> f.lane & 1u))
    report(Finding::WarpMask, a.file, a.line,
           "lane %d calls %s with mask 0x%08x, which leaves it out", f.lane, op_name(a.kind),
           a.mask);
  if (a.mask & ~present)
    report(Finding::WarpMask, a.file, a.line,
           "mask 0x%08x names lanes this warp does not have (%d lanes)", a.mask, n);
  unsigned exited = 0;
  for (int l = 0; l < n; ++l)
    if (g.fibers[static_cast<size_t>(f.warp * 32 + l)].state == State::Done) exited |= 1u << l;
  if (a.mask & exited)
    report(Finding::WarpMask, a.file, a.line, "mask 0x%08x names lanes that exited (0x%08x)",
           a.mask,
           a.mask & exited);
  a.mask = (a.mask & present & ~exited) | (1u << f.lane);
  f.arrival = a, f.file = a.file, f.line = a.line;
  f.state = State::AtWarp;
  try_complete(f.warp);
  if (f.state != State::Ready) switch_to_main(f);
  f.state = State::Ready;
}

void report(Finding kind, const char* file, int line, const char* f, ...) {
  va_list ap;
  va_start(ap, f);
  const std::string what = fmt(f, ap);
  va_end(ap);
  add_finding(kind, file ? site(file, line) : site(g.current->file, g.current->line), what);
}

// ---- launches ----
size_t max_dynamic_shared(int sm) {
  switch (sm) {
    case 80: return 163 * 1024;
    case 86:
    case 89: return 99 * 1024;
    case 90: return 227 * 1024;
  }
  return 48 * 1024;
}

void set_arch(int sm) { g_arch = sm; }
int arch() {
  if (g_arch == 0) {
    const char* e = std::getenv("SLIME_EMU_ARCH");
    g_arch = e ? std::atoi(e) : 80;
  }
  return g_arch;
}

cudaError_t set_dynamic_shared_limit(const void* kernel, int bytes) {
  if (bytes < 0 || static_cast<size_t>(bytes) > max_dynamic_shared(arch()))
    return g_last_error = cudaErrorInvalidValue;
  g_dynamic_limit[kernel] = bytes;
  return cudaSuccess;
}

void launch(dim3 grid, dim3 block, size_t smem, const void* kernel, Thunk thunk, void* args) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || threads == 0 || threads > kMaxThreads ||
      block.x > 1024 || block.y > 1024 || block.z > 64 || grid.x > 0x7fffffffu ||
      grid.y > 65535 || grid.z > 65535) {
    g_last_error = cudaErrorInvalidConfiguration;
    return;
  }
  const auto lim = g_dynamic_limit.find(kernel);
  if (smem > (lim == g_dynamic_limit.end() ? 48 * 1024 : static_cast<size_t>(lim->second))) {
    g_last_error = cudaErrorInvalidValue;
    return;
  }
  if (g_tls_size == 0) {
    dl_iterate_phdr(&tls_phdr, nullptr);
    g_shadow.assign(g_tls_size, Cell{});
    g_cells = g_shadow.data();
    __asan_get_shadow_mapping(&g_asan_scale, &g_asan_offset);
    g_stacks = static_cast<char*>(mmap(nullptr, kStack * kMaxThreads, PROT_READ | PROT_WRITE,
                                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
    if (g_stacks == MAP_FAILED) std::abort();
    for (int t = 0; t < kMaxThreads; ++t) {  // guard pages at both ends of each stack
      mprotect(g_stacks + t * kStack, kGuard, PROT_NONE);
      mprotect(g_stacks + (t + 1) * kStack - kGuard, kGuard, PROT_NONE);
    }
  }
  static char name[512];
  // The symbolizer takes an address as a return address (it looks one byte back).
  __sanitizer_symbolize_pc(static_cast<char*>(const_cast<void*>(kernel)) + 1, "%f", name,
                           sizeof(name));
  g_kernel_name = name;
  g.kernel = kernel, g.thunk = thunk, g.args = args;
  g.nthreads = static_cast<int>(threads);
  g.fibers.assign(threads, Fiber{});
  g.warp_epoch.assign((threads + 31) / 32, 0u);
  g_warp_epoch = g.warp_epoch.data();
  for (int t = 0; t < g.nthreads; ++t) {
    Fiber& f = g.fibers[static_cast<size_t>(t)];
    f.stack = g_stacks + t * kStack;
    f.idx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
    f.linear = t, f.warp = t / 32, f.lane = t % 32;
  }
  g_block_dim = block, g_grid_dim = grid, g_dynamic_bytes = smem;
  g_in_block = true;
  bool failed = false;
  for (unsigned z = 0; z < grid.z && !failed; ++z)
    for (unsigned y = 0; y < grid.y && !failed; ++y)
      for (unsigned x = 0; x < grid.x && !failed; ++x) {
        g_block_idx = {x, y, z};
        run_block();
        failed = g.aborted;  // a hung block: the launch fails, as the watchdog would end it
      }
  g_in_block = false;
  g_thread_idx = nullptr;
  if (failed) g_last_error = cudaErrorLaunchFailure;
}

const char* finding_name(Finding f) {
  switch (f) {
    case Finding::SharedRace: return "shared-race";
    case Finding::SharedUninit: return "shared-uninit";
    case Finding::SharedOutOfBounds: return "shared-out-of-bounds";
    case Finding::BarrierDivergence: return "barrier-divergence";
    case Finding::WarpMask: return "warp-mask";
    case Finding::Count: break;
  }
  return "?";
}
int findings(Finding f) { return g_counts[static_cast<int>(f)]; }
int total_findings() {
  int n = 0;
  for (int c : g_counts) n += c;
  return n;
}
void reset_findings() {
  g_sites.clear();
  for (int& c : g_counts) c = 0;
}

}  // namespace emu

// ---- the kernel translation units' memory access hooks ----
// g++ -fsanitize=thread calls these before every load and store it cannot prove private to
// the thread (unlike ASan's outlined checks, it keeps both halves of a read-modify-write).
// The TSan runtime itself is not linked: these are all of it that the kernels need.
#define EMU_HOOK(n)                                                                         \
  extern "C" void __tsan_read##n(void* p) {                                                \
    emu::check(p, n, false, __builtin_return_address(0));                                   \
  }                                                                                         \
  extern "C" void __tsan_write##n(void* p) {                                               \
    emu::check(p, n, true, __builtin_return_address(0));                                    \
  }                                                                                         \
  extern "C" void __tsan_unaligned_read##n(void* p) {                                      \
    emu::check(p, n, false, __builtin_return_address(0));                                   \
  }                                                                                         \
  extern "C" void __tsan_unaligned_write##n(void* p) {                                     \
    emu::check(p, n, true, __builtin_return_address(0));                                    \
  }
EMU_HOOK(1)
EMU_HOOK(2)
EMU_HOOK(4)
EMU_HOOK(8)
EMU_HOOK(16)
extern "C" void __tsan_read_range(void* p, long n) {
  emu::check(p, static_cast<size_t>(n), false, __builtin_return_address(0));
}
extern "C" void __tsan_write_range(void* p, long n) {
  emu::check(p, static_cast<size_t>(n), true, __builtin_return_address(0));
}
extern "C" void __tsan_init() {}

// ---- runtime API ----
cudaError_t cudaGetLastError() {
  const cudaError_t e = emu::g_last_error;
  emu::g_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return emu::g_last_error; }
const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}
cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  // Each buffer its own heap block of exactly `bytes`, so ASan's redzones sit at its ends.
  if (posix_memalign(ptr, 256, bytes ? bytes : 1) != 0) return cudaErrorMemoryAllocation;
  return cudaSuccess;
}
cudaError_t cudaFree(void* ptr) {
  std::free(ptr);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  if (bytes) std::memcpy(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t) {
  return cudaMemcpy(dst, src, bytes, kind);
}
cudaError_t cudaMemset(void* dst, int value, size_t bytes) {
  if (bytes) std::memset(dst, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t) {
  return cudaMemset(dst, value, bytes);
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
