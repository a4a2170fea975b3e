// The emulated device's runtime: kernel lookup, launches, the per-block fiber scheduler,
// barriers, warp collectives and shared memory. See emu.cuh for the model.
//
// One launch runs on the calling OS thread from start to end; launches on different OS threads
// share nothing but the read-only kernel registry, so the Rust side needs no lock.
#include <cstdarg>
#include <cstdlib>
#include <dlfcn.h>
#include <exception>
#include <map>
#include <mutex>
#include <string>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>
#include <shared_mutex>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "emu.cuh"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define INSCLR_EMU_ASAN 1
#else
#define INSCLR_EMU_ASAN 0
#endif

// The families, written by build.rs into registry.cpp.
extern "C" const insclr_emu::Family* const insclr_emu_families[];
extern "C" const unsigned int insclr_emu_family_count;

namespace insclr_emu {

INSCLR_EMU_TLS const Coords* current = nullptr;

// Settings and reports of the race checker and the memory counters (defined at the end).
bool race_check_enabled();
unsigned long long race_checked_blocks();
bool counting_enabled();

namespace {

constexpr unsigned char POISON = 0xFF;
// Generous for kernels' local arrays and for AddressSanitizer's larger frames; only the pages a
// fiber touches are ever committed.
constexpr size_t STACK_BYTES = 512 * 1024;
constexpr size_t SHARED_ALIGN = 128;
// What a kernel may declare as __shared__ arrays on any GPU; more must be dynamic shared memory.
constexpr size_t STATIC_SHARED_BYTES = 48 * 1024;
const size_t PAGE_BYTES = static_cast<size_t>(sysconf(_SC_PAGESIZE));

// splitmix64: a seeded stream for the block and thread orders.
struct Rng {
    uint64_t s;
    uint64_t next() {
        uint64_t z = (s += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    template <typename T>
    void shuffle(std::vector<T>& v) {
        for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[next() % i]);
    }
};

enum class State { Ready, AtBarrier, AtWarp, Done };

// ---- fiber contexts -------------------------------------------------------------------------
// On x86-64 a fiber switch is a handful of register moves (insclr_emu_switch below): a tenth of
// the cost of swapcontext, which makes a system call for the signal mask on every switch.
// Elsewhere ucontext does the job.
void fiber_main();

#if defined(__x86_64__) && !defined(INSCLR_EMU_UCONTEXT)
extern "C" void insclr_emu_switch(void** save_sp, void* load_sp);
// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack, stores
// the stack pointer in *save_sp, then restores the same from load_sp and returns there.
asm(R"(
    .text
    .globl insclr_emu_switch
    .type insclr_emu_switch, @function
insclr_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size insclr_emu_switch, .-insclr_emu_switch
    .section .note.GNU-stack,"",@progbits
    .text
)");

struct Context {
    void* sp = nullptr;
};

// A context that starts fiber_main on the stack [lo, lo + bytes): the frame insclr_emu_switch
// pops, with fiber_main as the return address and the ABI's stack alignment at its entry.
void context_start(Context& c, char* lo, size_t bytes) {
    uintptr_t top = (reinterpret_cast<uintptr_t>(lo) + bytes) & ~static_cast<uintptr_t>(15);
    uint64_t* sp = reinterpret_cast<uint64_t*>(top);
#if INSCLR_EMU_ASAN
    // A stack reused after an aborted launch still carries the shadow of its abandoned frames.
    __asan_unpoison_memory_region(sp - 16, 16 * sizeof(uint64_t));
#endif
    *--sp = 0;                                         // fiber_main's (never used) return address
    *--sp = reinterpret_cast<uint64_t>(&fiber_main);  // where the switch returns to
    for (int r = 0; r < 6; ++r) *--sp = 0;             // rbp, rbx, r12..r15
    uint32_t mxcsr;
    uint16_t fpucw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpucw));
    *--sp = mxcsr | static_cast<uint64_t>(fpucw) << 32;
    c.sp = sp;
}

void context_switch(Context& from, Context& to) { insclr_emu_switch(&from.sp, to.sp); }
#else
struct Context {
    ucontext_t uc;
    bool initialised = false;
};

void context_start(Context& c, char* lo, size_t bytes) {
    if (!c.initialised) {
        getcontext(&c.uc);  // a system call: once per fiber and launch, not per block
        c.initialised = true;
    }
    c.uc.uc_stack.ss_sp = lo;
    c.uc.uc_stack.ss_size = bytes;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, fiber_main, 0);
}

void context_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

struct Stack {
    char* base = nullptr;  // guard page first, then STACK_BYTES
    char* lo() const { return base + page_size(); }
    static size_t page_size() { return PAGE_BYTES; }
};

// A cp.async in flight: its source read at issue, written to shared memory by the wait that
// covers its group.
struct AsyncCopy {
    void* dst;
    unsigned char data[16];
    unsigned int bytes;
    unsigned int group;
    uintptr_t pc;  // where it was issued, for the race checker's reports
};

struct Fiber {
    Context ctx;
    Stack stack;
    Coords coords;
    int linear = 0;
    uint16_t warp = 0;
    State state = State::Ready;
    bool yielded = false;  // called yield() in this round: the others run first
    int barrier_pred = 0;
    int barrier_result = 0;
    const Collective* waiting_op = nullptr;
    unsigned int waiting_mask = 0;
    void* asan_fake_stack = nullptr;
    std::vector<AsyncCopy> copies;
    unsigned int committed = 0;  // cp.async groups committed so far
    // Memory counters: how often this lane has run each access site since the last barrier, so
    // that the n-th run of a site pairs with the other lanes' n-th run (one warp instruction).
    std::unordered_map<uintptr_t, uint32_t> site_runs;
};

struct Episode {
    const Collective* op;
    unsigned int mask;
    unsigned int arrived;
    void* data[32];
};

struct SharedAlloc {
    const void* key;
    void* ptr;
    size_t bytes;
};

// ---- what the race checker keeps per byte of shared memory ----------------------------------
// A barrier interval is an epoch (numbered across the blocks of a launch, so a new block needs no
// reset). Warps, not lanes: lanes of one warp are ordered by the warp's collectives and this
// checker looks for the races between warps that a missing __syncthreads causes.
// The shadow is kept per 2 bytes (a bf16): the smallest element our kernels keep in shared memory,
// so two warps that write neighbouring bf16 are told apart (single bytes written by different
// warps in one interval would be taken for a race). Sites are code addresses stored as offsets
// from the executable's start.
constexpr uint16_t NO_WARP = 0xffff;
constexpr unsigned SHADOW_UNIT = 2;
struct Shadow {
    uint32_t write_epoch = 0, read_epoch = 0;
    uint16_t writer = NO_WARP, reader = NO_WARP, other_reader = NO_WARP;
    uint8_t pending = 0;  // a cp.async into these bytes has not landed yet
    uint32_t write_pc = 0, read_pc = 0, other_read_pc = 0;
};

uintptr_t code_base() {
    static const uintptr_t base = [] {
        Dl_info info{};
        return dladdr(reinterpret_cast<void*>(&code_base), &info) ? reinterpret_cast<uintptr_t>(info.dli_fbase) : 0;
    }();
    return base;
}
uint32_t pack_pc(uintptr_t pc) { return pc - code_base() < (1ull << 32) ? static_cast<uint32_t>(pc - code_base()) : 0; }
uintptr_t unpack_pc(uint32_t off) { return off ? code_base() + off : 0; }

// One __shared__ array (or the dynamic shared memory) of the running block, with its shadow.
struct Region {
    uintptr_t lo, hi;
    Shadow* shadow;  // one per SHADOW_UNIT bytes from lo (which is 128-byte aligned)
    const char* name;
    Shadow* at(uintptr_t a) const { return shadow + (a - lo) / SHADOW_UNIT; }
};

// The shadow units that bytes [a, a + n) touch.
unsigned units_of(uintptr_t a, unsigned n) { return static_cast<unsigned>((a + n - 1) / SHADOW_UNIT - a / SHADOW_UNIT + 1); }

// The shadows outlive a block: the next block's array of the same declaration reuses them.
struct ShadowStore {
    const void* key;
    std::vector<Shadow> bytes;
};

// The race found, reported with both sites once the launch has stopped.
struct Race {
    std::string what;  // "warp 2 wrote As+0x40", filled in by race()
    uintptr_t first_pc = 0, second_pc = 0;
    std::string first, second;
};

// ---- the memory counters ----------------------------------------------------------------------
enum Space : uint8_t { SPACE_SHARED, SPACE_GLOBAL, SPACE_NONE };

// One warp instruction being assembled from its lanes' accesses.
struct Group {
    uint8_t space, op;
    uint16_t width;
    uint32_t mask;
    uint32_t skipped;  // lanes that ran the site and accessed nothing (a zero-filled cp.async's source)
    uintptr_t addr[32];
};

// The n-th run of an access site by a lane since the last barrier: the lanes' n-th runs of one
// site make one warp instruction.
struct SiteRun {
    uintptr_t pc;
    uint32_t run;
    bool operator==(const SiteRun& o) const { return pc == o.pc && run == o.run; }
};
struct SiteRunHash {
    size_t operator()(const SiteRun& k) const { return std::hash<uintptr_t>()(k.pc * 0x9e3779b97f4a7c15ull ^ k.run); }
};

struct StatKey {
    uintptr_t pc;
    uint8_t space, op;
    uint16_t width;
    bool operator<(const StatKey& o) const {
        return std::tie(pc, space, op, width) < std::tie(o.pc, o.space, o.op, o.width);
    }
};
struct StatVal {
    uint64_t requests = 0, transactions = 0, ideal = 0, bytes = 0;
    void add(const StatVal& o) {
        requests += o.requests, transactions += o.transactions, ideal += o.ideal, bytes += o.bytes;
    }
};
using KernelStats = std::map<StatKey, StatVal>;
// Per kernel name (the registry's static strings).
using Collected = std::map<std::pair<std::string, StatKey>, StatVal>;

struct Launch {
    const Kernel* kernel;
    void* const* args;
    dim3 grid, block;
    unsigned int dyn_smem;
    Rng rng;
    unsigned int threads;
    std::vector<Fiber> fibers;
    std::vector<std::vector<Episode>> episodes;  // per warp, pending collectives
    std::vector<SharedAlloc> shared;             // this block's __shared__ arrays
    void* dyn_shared = nullptr;
    // Without AddressSanitizer, a block's shared memory is one arena: the static arrays from its
    // start, the dynamic shared memory after STATIC_SHARED_BYTES. (With it, each array is an
    // allocation of its own, so that its bounds are checked.)
    char* arena = nullptr;
    size_t static_used = 0, static_high = 0;
    Context scheduler;
    const void* scheduler_stack_lo = nullptr;
    size_t scheduler_stack_size = 0;
    Fiber* running = nullptr;
    bool failed = false;
    std::string error;
    unsigned long long ticks = 0;
    // The race checker and the memory counters.
    uint32_t epoch = 0;
    bool muted = false;       // a collective's combine runs: the emulator's own accesses
    bool race_check = false;    // for this launch
    bool check_block = false;   // for the running block
    unsigned long long blocks_run = 0;
    bool counting = false;
    std::vector<Region> regions;
    std::vector<ShadowStore> shadows;
    std::vector<Shadow> dyn_shadow;
    Race race;
    bool raced = false;
    std::vector<std::unordered_map<SiteRun, Group, SiteRunHash>> groups;  // per warp
    KernelStats stats;
};

INSCLR_EMU_TLS Launch* launch = nullptr;

// The running launch's shared memory as one address range, and whether every access counts (the
// memory counters are on): the compiler's hooks return at once for any other address.
INSCLR_EMU_TLS uintptr_t window_lo = 0;
INSCLR_EMU_TLS uintptr_t window_bytes = 0;
INSCLR_EMU_TLS bool window_all = false;

// Fiber stacks kept between launches of one OS thread, unmapped when the thread ends.
struct StackPool {
    std::vector<Stack> stacks;
    ~StackPool() {
        for (const Stack& s : stacks) munmap(s.base, STACK_BYTES + Stack::page_size());
    }
};
thread_local StackPool stack_pool;

// Exactly `bytes` (not rounded up to the alignment), so that AddressSanitizer's redzone starts
// right after the last byte a kernel may touch.
void* alloc_poisoned(size_t bytes, size_t align) {
    void* p = nullptr;
    if (posix_memalign(&p, align, bytes == 0 ? 1 : bytes) != 0) return nullptr;
    std::memset(p, POISON, bytes == 0 ? 1 : bytes);
    return p;
}

Stack take_stack() {
    if (!stack_pool.stacks.empty()) {
        Stack s = stack_pool.stacks.back();
        stack_pool.stacks.pop_back();
        return s;
    }
    size_t total = STACK_BYTES + Stack::page_size();
    void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return Stack{};
    mprotect(p, Stack::page_size(), PROT_NONE);  // an overflowing fiber faults instead of corrupting
    Stack s;
    s.base = static_cast<char*>(p);
    return s;
}

std::string describe(const Fiber& f) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "thread (%u,%u,%u)", f.coords.thread_idx.x, f.coords.thread_idx.y,
                  f.coords.thread_idx.z);
    return buf;
}

std::string block_name(const Launch& l) {
    const Coords& c = l.fibers.front().coords;
    char buf[96];
    std::snprintf(buf, sizeof buf, "block (%u,%u,%u)", c.block_idx.x, c.block_idx.y, c.block_idx.z);
    return buf;
}

// Switches from the running fiber back to the scheduler; returns when the fiber is resumed.
void switch_to_scheduler(bool finished) {
    Launch& l = *launch;
    Fiber* f = l.running;
#if INSCLR_EMU_ASAN
    __sanitizer_start_switch_fiber(finished ? nullptr : &f->asan_fake_stack, l.scheduler_stack_lo,
                                   l.scheduler_stack_size);
#endif
    context_switch(f->ctx, l.scheduler);
#if INSCLR_EMU_ASAN
    __sanitizer_finish_switch_fiber(f->asan_fake_stack, nullptr, nullptr);
#endif
    (void)finished;
}

[[noreturn]] void fail_running(const std::string& msg) {
    Launch& l = *launch;
    if (!l.failed) {
        l.failed = true;
        l.error = msg;
    }
    switch_to_scheduler(true);
    std::abort();  // a failed launch never resumes its fibers
}

void check_exit_of(Fiber& f) {
    Launch& l = *launch;
    unsigned int warp = static_cast<unsigned int>(f.linear) / 32;
    for (const Episode& e : l.episodes[warp]) {
        if (e.mask >> f.coords.lane & 1u) {
            char buf[160];
            std::snprintf(buf, sizeof buf, "%s of %s exited while lanes 0x%08x of its warp wait for it at %s (mask 0x%08x)",
                          describe(f).c_str(), block_name(l).c_str(), e.arrived, e.op->name, e.mask);
            l.failed = true;
            l.error = buf;
        }
    }
}

// ---- the race checker ---------------------------------------------------------------------------

// Epochs count barrier intervals over every launch of this OS thread, so the shadows of one
// __shared__ declaration serve every block and launch without a reset.
thread_local uint32_t epoch_counter = 0;
thread_local std::vector<ShadowStore> shadow_stores;
thread_local std::vector<Shadow> dyn_shadow_store;

void next_epoch(Launch& l) {
    if (++epoch_counter == 0) {  // wrapped after 2^32 intervals: old epochs could match again
        for (ShadowStore& s : shadow_stores) std::fill(s.bytes.begin(), s.bytes.end(), Shadow{});
        std::fill(dyn_shadow_store.begin(), dyn_shadow_store.end(), Shadow{});
        epoch_counter = 1;
    }
    l.epoch = epoch_counter;
}

Shadow* shadow_for(const void* key, size_t bytes) {
    for (ShadowStore& s : shadow_stores)
        if (s.key == key) return s.bytes.data();
    shadow_stores.push_back(ShadowStore{key, std::vector<Shadow>((bytes + SHADOW_UNIT - 1) / SHADOW_UNIT)});
    return shadow_stores.back().bytes.data();
}

Region* find_region(Launch& l, uintptr_t a, unsigned n) {
    for (Region& r : l.regions)
        if (a >= r.lo && a + n <= r.hi) return &r;
    return nullptr;
}

const char* access_verb(bool write) { return write ? "wrote" : "read"; }

// Stops the launch at a race; the message is written when the launch has stopped (the sites are
// looked up outside the fibers).
[[noreturn]] void race(Launch& l, const Region& r, uintptr_t a, const std::string& first, uintptr_t first_pc,
                       const std::string& second, uintptr_t second_pc, const char* advice) {
    char buf[512];
    std::snprintf(buf, sizeof buf, "%s %s+%zu (@1) and %s (@2) %s", first.c_str(), r.name,
                  static_cast<size_t>(a - r.lo), second.c_str(), advice);
    l.race = Race{buf, first_pc, second_pc, {}, {}};
    l.raced = true;
    fail_running("shared-memory race");
}

std::string warp_did(uint16_t warp, const char* what) {
    return "warp " + std::to_string(warp) + " " + what;
}

// A shared-memory access of `n` bytes at `a` by `warp`, against what other warps did to the same
// bytes since the last barrier. Reported by race_report; the common case (no race) is one pass
// without branches to check and one to record.
[[noreturn]] void race_report(Launch& l, const Region& r, uintptr_t a, unsigned n, bool write, uint16_t warp,
                              uintptr_t pc) {
    Shadow* s = r.at(a);
    const uint32_t e = l.epoch;
    const char* verb = access_verb(write);
    const uintptr_t unit0 = a / SHADOW_UNIT * SHADOW_UNIT;
    for (unsigned i = 0, units = units_of(a, n); i < units; ++i, ++s) {
        uintptr_t at = std::max(a, unit0 + i * SHADOW_UNIT);
        if (s->pending)
            race(l, r, at, warp_did(s->writer, "issued a cp.async into"), unpack_pc(s->write_pc),
                 warp_did(warp, verb) + " it", pc,
                 "before a cp.async.wait_group covering that copy (and, for another warp, a __syncthreads after it)");
        if (s->write_epoch == e && s->writer != warp)
            race(l, r, at, warp_did(s->writer, "wrote"), unpack_pc(s->write_pc), warp_did(warp, verb) + " it", pc,
                 "in the same barrier interval: a __syncthreads between them is missing");
        if (write && s->read_epoch == e && (s->reader != warp || s->other_reader != NO_WARP)) {
            bool first = s->reader != warp;
            race(l, r, at, warp_did(first ? s->reader : s->other_reader, "read"),
                 unpack_pc(first ? s->read_pc : s->other_read_pc), warp_did(warp, "wrote") + " it", pc,
                 "in the same barrier interval: a __syncthreads between them is missing");
        }
    }
    fail_running("shared-memory race (not located)");
}

void check_shared(Launch& l, const Region& r, uintptr_t a, unsigned n, bool write, uint16_t warp, uintptr_t pc) {
    Shadow* s = r.at(a);
    const uint32_t e = l.epoch;
    const unsigned units = units_of(a, n);
    bool raced = false;
    for (unsigned i = 0; i < units; ++i) {
        raced |= s[i].pending != 0;
        raced |= (s[i].write_epoch == e) & (s[i].writer != warp);
        if (write) raced |= (s[i].read_epoch == e) & ((s[i].reader != warp) | (s[i].other_reader != NO_WARP));
    }
    if (raced) race_report(l, r, a, n, write, warp, pc);
    const uint32_t site = pack_pc(pc);
    for (unsigned i = 0; i < units; ++i) {
        Shadow& b = s[i];
        if (write) {
            b.write_epoch = e, b.writer = warp, b.write_pc = site;
        } else if (b.read_epoch != e) {
            b.read_epoch = e, b.reader = warp, b.read_pc = site, b.other_reader = NO_WARP;
        } else if (b.reader != warp && b.other_reader == NO_WARP) {
            b.other_reader = warp, b.other_read_pc = site;
        }
    }
}

// ---- the memory counters --------------------------------------------------------------------------

// Device allocations, to tell global memory from the host's (kernel arguments, lane data).
std::shared_mutex device_mutex;
std::map<uintptr_t, size_t> device_allocations;

bool is_device_memory(uintptr_t a, unsigned n) {
    std::shared_lock<std::shared_mutex> lock(device_mutex);
    auto it = device_allocations.upper_bound(a);
    if (it == device_allocations.begin()) return false;
    --it;
    return a + n <= it->first + it->second;
}


// Shared memory serves 128 bytes a wavefront, 4 bytes from each of 32 banks; a request's lanes
// are split into phases of 128 bytes (8 lanes of 16 bytes, 16 of 8, or the whole warp), and a
// phase takes as many wavefronts as the most distinct 4-byte words any one bank must deliver.
void shared_wavefronts(const Group& g, StatVal& v) {
    const int per_phase = g.width >= 16 ? 8 : g.width == 8 ? 16 : 32;
    for (int p0 = 0; p0 < 32; p0 += per_phase) {
        uintptr_t words[128];
        int count = 0;
        for (int lane = p0; lane < p0 + per_phase; ++lane) {
            if (!(g.mask >> lane & 1u)) continue;
            for (uintptr_t w = g.addr[lane] / 4; w <= (g.addr[lane] + g.width - 1) / 4 && count < 128; ++w)
                words[count++] = w;
        }
        if (count == 0) continue;
        std::sort(words, words + count);
        count = static_cast<int>(std::unique(words, words + count) - words);
        int per_bank[32] = {0};
        int worst = 0;
        for (int i = 0; i < count; ++i) worst = std::max(worst, ++per_bank[words[i] % 32]);
        v.transactions += static_cast<uint64_t>(worst);
        v.ideal += 1;
    }
}

// Global memory moves 32-byte sectors; the ideal is the fewest sectors the requested bytes fit in.
void global_sectors(const Group& g, StatVal& v) {
    std::pair<uintptr_t, uintptr_t> spans[32];
    int n = 0;
    for (int lane = 0; lane < 32; ++lane)
        if (g.mask >> lane & 1u) spans[n++] = {g.addr[lane], g.addr[lane] + g.width};
    std::sort(spans, spans + n);
    uint64_t sectors = 0, bytes = 0;
    uintptr_t covered = 0, last_sector = UINTPTR_MAX;
    for (int i = 0; i < n; ++i) {
        uintptr_t lo = std::max(spans[i].first, covered), hi = spans[i].second;
        if (hi > lo) bytes += hi - lo;
        covered = std::max(covered, hi);
        for (uintptr_t s = spans[i].first / 32; s <= (spans[i].second - 1) / 32; ++s)
            if (last_sector == UINTPTR_MAX || s > last_sector) ++sectors, last_sector = s;
    }
    v.transactions += sectors;
    v.ideal += (bytes + 31) / 32;
}

void flush_group(Launch& l, uintptr_t pc, const Group& g) {
    StatVal v;
    v.requests = 1;
    v.bytes = static_cast<uint64_t>(__builtin_popcount(g.mask)) * g.width;
    if (g.space == SPACE_SHARED) {
        shared_wavefronts(g, v);
    } else {
        global_sectors(g, v);
    }
    l.stats[StatKey{pc, g.space, g.op, g.width}].add(v);
}

// A site's runs are counted per space: a cp.async reports its source (global) and its
// destination (shared) from one line, and a lane whose copy reads nothing reports only the
// destination, so one count for both would put different copies of different lanes in one group.
uintptr_t run_key(uintptr_t pc, uint8_t space) { return pc * 2 + (space == SPACE_GLOBAL); }

// Groups whose lanes did not all arrive (a branch some lanes skipped) count as they are; a group
// of lanes that all accessed nothing is no request.
void flush_groups(Launch& l) {
    for (auto& warp : l.groups) {
        for (auto& [key, g] : warp)
            if (g.mask) flush_group(l, key.pc / 2, g);
        warp.clear();
    }
    for (Fiber& f : l.fibers) f.site_runs.clear();
}

// The lanes of `warp` that exist and have not exited.
uint32_t live_mask(const Launch& l, unsigned warp) {
    uint32_t m = 0;
    for (unsigned o = 0; o < 32 && warp * 32 + o < l.threads; ++o)
        if (l.fibers[warp * 32 + o].state != State::Done) m |= 1u << o;
    return m;
}

void note(Launch& l, Fiber& f, uint8_t space, uint8_t op, uintptr_t a, unsigned width, uintptr_t pc) {
    const uintptr_t at = run_key(pc, space);
    uint32_t run = f.site_runs[at]++;
    auto& warp = l.groups[f.warp];
    SiteRun key{at, run};
    Group& g = warp[key];
    if (g.mask == 0) g.space = space, g.op = op, g.width = static_cast<uint16_t>(width);
    g.mask |= 1u << f.coords.lane;
    g.addr[f.coords.lane] = a;
    if ((g.mask | g.skipped) == live_mask(l, f.warp)) {
        flush_group(l, pc, g);
        warp.erase(key);
    }
}

// A lane ran a global access site and accessed nothing (a zero-filled cp.async): its run still
// counts, so that its next run lines up with the other lanes' next one.
void note_nothing(Launch& l, Fiber& f, uintptr_t pc) {
    const uintptr_t at = run_key(pc, SPACE_GLOBAL);
    uint32_t run = f.site_runs[at]++;
    auto& warp = l.groups[f.warp];
    SiteRun key{at, run};
    Group& g = warp[key];
    g.skipped |= 1u << f.coords.lane;
    if ((g.mask | g.skipped) == live_mask(l, f.warp)) {
        if (g.mask) flush_group(l, pc, g);
        warp.erase(key);
    }
}

// Every load and store the compiler instrumented in a kernel (and the wrappers' explicit ones).
void on_access(const void* p, unsigned n, bool write, uintptr_t pc, uint8_t op) {
    Launch* lp = launch;
    if (!lp || lp->muted || !lp->running) return;
    Launch& l = *lp;
    Fiber& f = *l.running;
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    // The fiber's own stack holds what a GPU keeps in registers or local memory.
    if (a - reinterpret_cast<uintptr_t>(f.stack.base) < STACK_BYTES + PAGE_BYTES) return;
    if (Region* r = find_region(l, a, n)) {
        if (l.check_block) check_shared(l, *r, a, n, write, f.warp, pc);
        if (l.counting) note(l, f, SPACE_SHARED, op, a, n, pc);
        return;
    }
    if (l.counting && is_device_memory(a, n)) note(l, f, SPACE_GLOBAL, op, a, n, pc);
}

void fiber_main() {
    Launch& l = *launch;
#if INSCLR_EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &l.scheduler_stack_lo, &l.scheduler_stack_size);
#endif
    l.kernel->call(l.args);
    Fiber* f = l.running;
    f->state = State::Done;
    check_exit_of(*f);
    switch_to_scheduler(true);
    std::abort();
}

void resume(Fiber& f) {
    Launch& l = *launch;
    l.running = &f;
    current = &f.coords;
#if INSCLR_EMU_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, f.stack.lo(), STACK_BYTES);
#endif
    context_switch(l.scheduler, f.ctx);
#if INSCLR_EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    l.running = nullptr;
    current = nullptr;
}

std::string waiting_report(const Launch& l) {
    std::string s;
    int shown = 0;
    for (const Fiber& f : l.fibers) {
        if (f.state == State::Done || f.state == State::Ready) continue;
        if (shown++ == 8) {
            s += ", ...";
            break;
        }
        if (!s.empty()) s += ", ";
        s += describe(f);
        if (f.state == State::AtBarrier) {
            s += " at __syncthreads";
        } else {
            char buf[96];
            std::snprintf(buf, sizeof buf, " at %s (mask 0x%08x)", f.waiting_op->name, f.waiting_mask);
            s += buf;
        }
    }
    return s;
}

// Everyone still running has reached __syncthreads (exited threads count as arrived, as on
// the hardware): computes the predicate reductions and releases them into a new interval.
void release_barrier(Launch& l) {
    int count = 0, all = 1, any = 0;
    for (Fiber& f : l.fibers) {
        if (f.state != State::AtBarrier) continue;
        count += f.barrier_pred != 0;
        all &= f.barrier_pred != 0;
        any |= f.barrier_pred != 0;
    }
    for (Fiber& f : l.fibers) {
        if (f.state != State::AtBarrier) continue;
        f.state = State::Ready;
        f.barrier_result = count;
        f.barrier_pred = all | (any << 1);
    }
    next_epoch(l);
    if (l.counting) flush_groups(l);
}

// Runs one block to completion; false (with l.error set) when it fails or would hang.
//
// Warps run one at a time in a seeded order, each until all its lanes wait at a barrier, have
// exited or yielded; within a warp the lanes run in a seeded order between its collectives. So
// one warp can get a whole barrier interval ahead of the others, as it may on a GPU.
bool run_block(Launch& l, uint3 block_idx) {
    for (Fiber& f : l.fibers) {
        f.coords.block_idx = block_idx;
        f.state = State::Ready;
        f.yielded = false;
        f.waiting_op = nullptr;
        f.copies.clear();
        f.committed = 0;
        f.site_runs.clear();
        context_start(f.ctx, f.stack.lo(), STACK_BYTES);
    }
    for (auto& e : l.episodes) e.clear();
    l.regions.clear();
    if (l.arena) std::memset(l.arena, POISON, l.static_high);
    if (l.dyn_smem) {
        std::memset(l.dyn_shared, POISON, l.dyn_smem);
        auto lo = reinterpret_cast<uintptr_t>(l.dyn_shared);
        l.regions.push_back(Region{lo, lo + l.dyn_smem, dyn_shadow_store.data(), "dynamic shared memory"});
    }
    next_epoch(l);
    // The checker's shadow work doubles an emulated kernel's time, so a large launch is checked
    // on a sample: the first blocks of its (seeded, shuffled) order and every block on the grid's
    // far edges, where the bounds checks differ. A missing barrier shows in every block.
    l.check_block = l.race_check && (l.blocks_run < race_checked_blocks() || block_idx.x + 1 == l.grid.x ||
                                     block_idx.y + 1 == l.grid.y || block_idx.z + 1 == l.grid.z);
    ++l.blocks_run;
    window_bytes = l.check_block && l.arena ? STATIC_SHARED_BYTES + l.dyn_smem : 0;

    const unsigned warps = (l.threads + 31) / 32;
    std::vector<unsigned> warp_order;
    std::vector<Fiber*> lanes;
    bool ok = true;
    while (ok) {
        size_t done = 0, at_barrier = 0, ready = 0;
        for (Fiber& f : l.fibers) {
            ready += f.state == State::Ready;
            done += f.state == State::Done;
            at_barrier += f.state == State::AtBarrier;
        }
        if (ready == 0) {
            if (done == l.fibers.size()) break;
            if (at_barrier + done == l.fibers.size()) {
                release_barrier(l);
                continue;
            }
            l.failed = true;
            l.error = "deadlock in " + block_name(l) + ": " + waiting_report(l) +
                      " (a GPU would hang here: threads wait at a barrier and in a warp collective, or a collective's lanes never all arrive)";
            ok = false;
            break;
        }
        warp_order.clear();
        for (unsigned w = 0; w < warps; ++w) warp_order.push_back(w);
        l.rng.shuffle(warp_order);
        for (unsigned w : warp_order) {
            Fiber* first = &l.fibers[w * 32];
            Fiber* end = &l.fibers[0] + std::min<size_t>(l.fibers.size(), (w + 1) * 32);
            for (;;) {
                lanes.clear();
                for (Fiber* f = first; f != end; ++f)
                    if (f->state == State::Ready && !f->yielded) lanes.push_back(f);
                if (lanes.empty()) break;
                l.rng.shuffle(lanes);
                for (Fiber* f : lanes) {
                    if (f->state != State::Ready || f->yielded) continue;
                    resume(*f);
                    if (l.failed) {
                        ok = false;
                        break;
                    }
                }
                if (!ok) break;
            }
            if (!ok) break;
        }
        for (Fiber& f : l.fibers) f.yielded = false;
    }
    if (l.counting) flush_groups(l);
    // A copy never waited for leaves no mark on the next block's shadow.
    for (Fiber& f : l.fibers)
        for (const AsyncCopy& c : f.copies)
            if (Region* r = find_region(l, reinterpret_cast<uintptr_t>(c.dst), c.bytes))
                for (unsigned i = 0; i < units_of(reinterpret_cast<uintptr_t>(c.dst), c.bytes); ++i)
                    r->at(reinterpret_cast<uintptr_t>(c.dst))[i].pending = 0;
    if (!l.arena)
        for (const SharedAlloc& s : l.shared) std::free(s.ptr);
    l.shared.clear();
    l.static_used = 0;
    l.regions.clear();
    return ok && !l.failed;
}

std::unordered_map<std::string, const Kernel*>& registry() {
    static std::unordered_map<std::string, const Kernel*> map;
    static std::once_flag once;
    std::call_once(once, [] {
        for (unsigned int i = 0; i < insclr_emu_family_count; ++i) {
            const Family* fam = insclr_emu_families[i];
            for (unsigned int k = 0; k < fam->count; ++k) map[fam->kernels[k].name] = &fam->kernels[k];
        }
    });
    return map;
}

void set_error(char* err, size_t cap, const std::string& msg) {
    if (!err || cap == 0) return;
    size_t n = std::min(cap - 1, msg.size());
    std::memcpy(err, msg.data(), n);
    err[n] = '\0';
}

}  // namespace

// ---- the device API behind emu.cuh ----------------------------------------------------------

void fail(const char* fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (!launch || !launch->running) {
        std::fprintf(stderr, "insclr emu: %s (outside a launch)\n", buf);
        std::abort();
    }
    fail_running(describe(*launch->running) + " of " + block_name(*launch) + ": " + buf);
}

int block_barrier(int op, int pred) {
    Launch& l = *launch;
    Fiber* f = l.running;
    f->state = State::AtBarrier;
    f->barrier_pred = pred;
    switch_to_scheduler(false);
    // The scheduler left the count in barrier_result and all | any << 1 in barrier_pred.
    switch (op) {
    case 1: return f->barrier_result;
    case 2: return f->barrier_pred & 1;
    case 3: return (f->barrier_pred >> 1) & 1;
    default: return 0;
    }
}

void warp_collective(unsigned int mask, const Collective* op, void* lane_data) {
    Launch& l = *launch;
    Fiber* f = l.running;
    unsigned int lane = f->coords.lane;
    unsigned int warp = static_cast<unsigned int>(f->linear) / 32;
    if (!(mask >> lane & 1u)) fail("%s with mask 0x%08x, which does not name the calling lane %u", op->name, mask, lane);
    unsigned int first = warp * 32;
    for (unsigned int o = 0; o < 32; ++o) {
        if (!(mask >> o & 1u)) continue;
        if (first + o >= l.threads)
            fail("%s with mask 0x%08x names lane %u, which does not exist (the block has %u threads)", op->name, mask, o,
                 l.threads);
        if (l.fibers[first + o].state == State::Done)
            fail("%s with mask 0x%08x names lane %u, which has exited", op->name, mask, o);
    }
    auto& pending = l.episodes[warp];
    Episode* ep = nullptr;
    // Collectives with other masks may be pending (a half warp still in its own shuffle while
    // the other half has moved on to a whole-warp one): they complete on their own, and lanes
    // that can never all arrive show up as a deadlock.
    for (Episode& e : pending)
        if (e.mask == mask) ep = &e;
    if (ep && ep->op != op)
        fail("%s while lanes 0x%08x of the warp wait at %s with the same mask 0x%08x (divergent collectives)", op->name,
             ep->arrived, ep->op->name, mask);
    if (!ep) {
        pending.push_back(Episode{op, mask, 0u, {}});
        ep = &pending.back();
    }
    ep->arrived |= 1u << lane;
    ep->data[lane] = lane_data;
    if (ep->arrived != mask) {
        f->state = State::AtWarp;
        f->waiting_op = op;
        f->waiting_mask = mask;
        switch_to_scheduler(false);
        return;  // the last lane to arrive ran the combine for everyone
    }
    Episode done = *ep;
    pending.erase(pending.begin() + (ep - pending.data()));
    // The combine moves the lanes' data (ldmatrix reads shared memory for them): the wrappers
    // have already recorded those accesses as the lanes' own.
    l.muted = true;
    done.op->combine(done.data, mask);
    l.muted = false;
    for (unsigned int o = 0; o < 32; ++o) {
        if (o != lane && (mask >> o & 1u)) {
            Fiber& other = l.fibers[first + o];
            other.state = State::Ready;
            other.waiting_op = nullptr;
        }
    }
}

unsigned int live_lanes() {
    Launch& l = *launch;
    unsigned int first = static_cast<unsigned int>(l.running->linear) / 32 * 32;
    unsigned int m = 0;
    for (unsigned int o = 0; o < 32 && first + o < l.threads; ++o)
        if (l.fibers[first + o].state != State::Done) m |= 1u << o;
    return m;
}

void yield() {
    launch->running->yielded = true;
    switch_to_scheduler(false);
}

unsigned long long clock_ticks() { return ++launch->ticks; }

void* block_shared(const void* key, size_t bytes, size_t align, const char* name) {
    Launch& l = *launch;
    for (const SharedAlloc& s : l.shared)
        if (s.key == key) return s.ptr;
    void* p = nullptr;
    if (l.arena) {
        align = std::max(align, SHARED_ALIGN);
        size_t at = (l.static_used + align - 1) / align * align;
        if (at + bytes > STATIC_SHARED_BYTES)
            fail("__shared__ %s takes the block's static shared memory past 48 KiB (%zu bytes), the most a GPU "
                 "allows; use dynamic shared memory",
                 name, at + bytes);
        p = l.arena + at;
        l.static_used = at + bytes;
        l.static_high = std::max(l.static_high, l.static_used);
    } else {
        p = alloc_poisoned(bytes, std::max(align, SHARED_ALIGN));
        if (!p) fail("out of host memory for %zu bytes of shared memory", bytes);
    }
    l.shared.push_back(SharedAlloc{key, p, bytes});
    auto lo = reinterpret_cast<uintptr_t>(p);
    l.regions.push_back(Region{lo, lo + bytes, shadow_for(key, bytes), name});
    return p;
}

void* dynamic_shared() {
    Launch& l = *launch;
    if (l.dyn_smem == 0) fail("dynamic shared memory used by a launch that asked for 0 bytes of it");
    return l.dyn_shared;
}


bool in_shared(const void* p, unsigned long bytes) {
    const Launch& l = *launch;
    auto inside = [&](const void* base, size_t size) {
        auto b = reinterpret_cast<uintptr_t>(base), q = reinterpret_cast<uintptr_t>(p);
        return q >= b && q + bytes <= b + size;
    };
    for (const SharedAlloc& s : l.shared)
        if (inside(s.ptr, s.bytes)) return true;
    return l.dyn_smem && inside(l.dyn_shared, l.dyn_smem);
}

void async_copy(void* dst, const void* src, unsigned int bytes, unsigned int src_bytes) {
    const void* pc = __builtin_return_address(0);  // the kernel's line: cp_async_16 is inlined there
    Launch& l = *launch;
    Fiber& f = *l.running;
    if (bytes == 0 || bytes > 16 || reinterpret_cast<uintptr_t>(dst) % bytes || reinterpret_cast<uintptr_t>(src) % bytes)
        fail("cp.async of %u bytes from %p to %p: addresses must be aligned to the size", bytes, src, dst);
    if (src_bytes > bytes) fail("cp.async of %u bytes with a source size of %u: at most the copy's size", bytes, src_bytes);
    if (!in_shared(dst, bytes)) fail("cp.async destination %p is not in this block's shared memory", dst);
    if (src_bytes && in_shared(src, src_bytes)) fail("cp.async source %p is in shared memory; it must be global", src);
    auto at = reinterpret_cast<uintptr_t>(pc);
    // The source is read at issue (a zero source size reads nothing: the padding case); the
    // destination counts as written by this warp from now on and may not be touched until a
    // wait covers the copy.
    if (src_bytes) {
        on_access(src, src_bytes, false, at, OP_CP_ASYNC);
    } else if (l.counting && !l.muted) {
        note_nothing(l, f, at);
    }
    Region* r = find_region(l, reinterpret_cast<uintptr_t>(dst), bytes);
    if (r && l.check_block) {
        check_shared(l, *r, reinterpret_cast<uintptr_t>(dst), bytes, true, f.warp, at);
        Shadow* s = r->at(reinterpret_cast<uintptr_t>(dst));
        for (unsigned i = 0; i < units_of(reinterpret_cast<uintptr_t>(dst), bytes); ++i) s[i].pending = 1;
    }
    if (r && l.counting) note(l, f, SPACE_SHARED, OP_CP_ASYNC, reinterpret_cast<uintptr_t>(dst), bytes, at);
    AsyncCopy c;
    c.dst = dst;
    c.bytes = bytes;
    c.group = f.committed;
    c.pc = at;
    std::memset(c.data, 0, sizeof c.data);
    if (src_bytes) std::memcpy(c.data, src, src_bytes);
    f.copies.push_back(c);
}

void async_commit() { ++launch->running->committed; }

void async_wait(unsigned int pending) {
    Fiber& f = *launch->running;
    // Groups below `done` have landed; uncommitted copies count as a group of their own.
    unsigned int done = f.committed >= pending ? f.committed - pending : 0;
    std::vector<AsyncCopy> still;
    Launch& l = *launch;
    for (const AsyncCopy& c : f.copies) {
        if (c.group < done) {
            std::memcpy(c.dst, c.data, c.bytes);
            // Landed: written by the issuing warp in this interval (other warps need a barrier).
            Region* r = find_region(l, reinterpret_cast<uintptr_t>(c.dst), c.bytes);
            if (r && l.check_block) {
                Shadow* s = r->at(reinterpret_cast<uintptr_t>(c.dst));
                for (unsigned i = 0; i < units_of(reinterpret_cast<uintptr_t>(c.dst), c.bytes); ++i) {
                    s[i].pending = 0;
                    s[i].write_epoch = l.epoch, s[i].writer = f.warp, s[i].write_pc = pack_pc(c.pc);
                }
            }
        } else {
            still.push_back(c);
        }
    }
    f.copies.swap(still);
}

void lane_access(const void* p, unsigned int bytes, bool write, unsigned int op, const void* pc) {
    on_access(p, bytes, write, reinterpret_cast<uintptr_t>(pc), static_cast<uint8_t>(op));
}

void count_mma(const void* pc) {
    Launch* l = launch;
    if (l && l->counting) l->stats[StatKey{reinterpret_cast<uintptr_t>(pc), SPACE_NONE, static_cast<uint8_t>(OP_MMA), 0}].requests += 1;
}

// The vector wrappers' copies run here, outside the compiler's hooks, and count as one access.
void vector_load(void* to, const void* from, unsigned int bytes) {
    // A GPU faults on a vector access that is not aligned to its size; so does the emulator.
    if (reinterpret_cast<uintptr_t>(from) % bytes != 0)
        fail("a %u-byte vector load from %p, which is not %u-byte aligned", bytes, from, bytes);
    on_access(from, bytes, false, reinterpret_cast<uintptr_t>(__builtin_return_address(0)), OP_LOAD);
    std::memcpy(to, from, bytes);
}

void vector_store(void* to, const void* from, unsigned int bytes) {
    if (reinterpret_cast<uintptr_t>(to) % bytes != 0)
        fail("a %u-byte vector store to %p, which is not %u-byte aligned", bytes, to, bytes);
    on_access(to, bytes, true, reinterpret_cast<uintptr_t>(__builtin_return_address(0)), OP_STORE);
    std::memcpy(to, from, bytes);
}

// ---- what the checker and the counters report -------------------------------------------------

bool env_flag(const char* name, bool fallback) {
    const char* v = std::getenv(name);
    if (!v || !*v) return fallback;
    return !(v[0] == '0' && v[1] == '\0');
}

// The race checker runs on every launch unless INSCLR_EMU_RACECHECK=0. Without the compiler's
// access hooks (the AddressSanitizer build) it sees only the wrappers' accesses.
bool race_check_enabled() {
    static const bool on = env_flag("INSCLR_EMU_RACECHECK", true);
    return on;
}

// Blocks of each launch the checker follows besides the grid's far edges: 8, or every block with
// INSCLR_EMU_RACECHECK=all.
unsigned long long race_checked_blocks() {
    static const unsigned long long n = [] {
        const char* v = std::getenv("INSCLR_EMU_RACECHECK");
        return v && std::strcmp(v, "all") == 0 ? ~0ull : 8ull;
    }();
    return n;
}

// Counters for the whole process (INSCLR_EMU_MEMSTATS=1), and for the launches of one OS thread
// between insclr_emu_memstats_begin and _end (tests).
std::mutex collected_mutex;
Collected collected;
thread_local Collected* thread_collected = nullptr;

bool process_counting() {
    static const bool on = env_flag("INSCLR_EMU_MEMSTATS", false);
    return on;
}

bool counting_enabled() { return process_counting() || thread_collected != nullptr; }

void collect(const char* kernel, const KernelStats& stats) {
    auto merge = [&](Collected& into) {
        for (const auto& [key, val] : stats) into[{kernel, key}].add(val);
    };
    if (thread_collected) merge(*thread_collected);
    if (process_counting()) {
        std::lock_guard<std::mutex> lock(collected_mutex);
        merge(collected);
    }
}

// Code addresses as source lines: addr2line over this executable's line tables (the emulated
// kernels are built with -g). The innermost line names the access; the lines it was inlined into
// follow ("arch.cuh:166 < arch.cuh:362 < gemm.cu:163").
std::mutex site_mutex;
std::map<uintptr_t, std::string> site_cache;

std::string base_name(const std::string& path) {
    size_t slash = path.rfind('/');
    return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string self_path() {
    char buf[4096];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string("/proc/self/exe");
}

void look_up_sites(const std::vector<uintptr_t>& pcs) {
    std::vector<uintptr_t> todo;
    {
        std::lock_guard<std::mutex> lock(site_mutex);
        for (uintptr_t pc : pcs)
            if (pc && !site_cache.count(pc)) todo.push_back(pc);
    }
    std::sort(todo.begin(), todo.end());
    todo.erase(std::unique(todo.begin(), todo.end()), todo.end());
    std::map<uintptr_t, std::string> found;
    for (size_t start = 0; start < todo.size(); start += 256) {
        Dl_info info{};
        if (!dladdr(reinterpret_cast<void*>(todo[start]), &info) || !info.dli_fbase) continue;
        auto base = reinterpret_cast<uintptr_t>(info.dli_fbase);
        // The main program's name may be relative (and /proc/self/exe would name addr2line itself).
        std::string file = info.dli_fname && info.dli_fname[0] == '/' ? info.dli_fname : self_path();
        std::string cmd = "addr2line -C -f -i -a -e '" + file + "'";
        size_t end = std::min(todo.size(), start + 256);
        std::map<uintptr_t, uintptr_t> by_offset;
        for (size_t i = start; i < end; ++i) {
            // A return address is the instruction after the access's call.
            uintptr_t off = todo[i] - 1 - base;
            by_offset[off] = todo[i];
            char hex[32];
            std::snprintf(hex, sizeof hex, " 0x%lx", static_cast<unsigned long>(off));
            cmd += hex;
        }
        cmd += " 2>/dev/null";
        FILE* pipe = popen(cmd.c_str(), "r");
        if (!pipe) continue;
        char line[4096];
        uintptr_t current_pc = 0;
        std::string chain, last;
        bool want_location = false;
        auto finish = [&] {
            if (current_pc && !chain.empty()) found[current_pc] = chain;
        };
        while (std::fgets(line, sizeof line, pipe)) {
            std::string t(line);
            while (!t.empty() && (t.back() == '\n' || t.back() == '\r')) t.pop_back();
            if (t.rfind("0x", 0) == 0) {
                finish();
                auto it = by_offset.find(static_cast<uintptr_t>(std::strtoull(t.c_str(), nullptr, 16)));
                current_pc = it == by_offset.end() ? 0 : it->second;
                chain.clear(), last.clear();
                want_location = false;
                continue;
            }
            if (!want_location) {  // a function name; its location follows
                want_location = true;
                continue;
            }
            want_location = false;
            size_t cut = t.find(" (discriminator");
            if (cut != std::string::npos) t.resize(cut);
            if (t.rfind("??", 0) == 0) continue;
            std::string loc = base_name(t);
            if (loc != last) chain += (chain.empty() ? "" : " < ") + loc;
            last = loc;
        }
        finish();
        pclose(pipe);
    }
    std::lock_guard<std::mutex> lock(site_mutex);
    for (uintptr_t pc : todo) {
        auto it = found.find(pc);
        char hex[40];
        std::snprintf(hex, sizeof hex, "pc 0x%lx", static_cast<unsigned long>(pc));
        site_cache[pc] = it == found.end() ? std::string(hex) : it->second;
    }
}

std::string site(uintptr_t pc) {
    look_up_sites({pc});
    std::lock_guard<std::mutex> lock(site_mutex);
    auto it = site_cache.find(pc);
    return it == site_cache.end() ? "?" : it->second;
}

}  // namespace insclr_emu

using namespace insclr_emu;

extern "C" {

// Poisoned, 256-byte aligned, as cudaMalloc's alignment; null when out of memory.
void* insclr_emu_alloc(size_t bytes) {
    void* p = alloc_poisoned(bytes == 0 ? 1 : bytes, 256);
    if (p) {
        std::unique_lock<std::shared_mutex> lock(device_mutex);
        device_allocations[reinterpret_cast<uintptr_t>(p)] = bytes == 0 ? 1 : bytes;
    }
    return p;
}

void insclr_emu_free(void* p) {
    {
        std::unique_lock<std::shared_mutex> lock(device_mutex);
        device_allocations.erase(reinterpret_cast<uintptr_t>(p));
    }
    std::free(p);
}

static int launch_impl(const char* kernel, const unsigned int grid[3], const unsigned int block[3],
                       unsigned int dyn_smem, void* const* args, const unsigned int* arg_sizes, unsigned int nargs,
                       unsigned long long seed, char* err, size_t err_cap) {
    auto& reg = registry();
    auto it = reg.find(kernel);
    if (it == reg.end()) {
        set_error(err, err_cap, std::string("no kernel named ") + kernel + " in the emulated kernels");
        return 1;
    }
    const Kernel* k = it->second;
    if (nargs != k->nargs) {
        set_error(err, err_cap, std::string(kernel) + " takes " + std::to_string(k->nargs) + " arguments, the launch passed " +
                                    std::to_string(nargs));
        return 1;
    }
    for (unsigned int i = 0; i < nargs; ++i) {
        if (arg_sizes[i] != k->arg_sizes[i]) {
            set_error(err, err_cap, std::string(kernel) + ": argument " + std::to_string(i) + " is " +
                                        std::to_string(arg_sizes[i]) + " bytes, the kernel's parameter is " +
                                        std::to_string(k->arg_sizes[i]));
            return 1;
        }
    }
    unsigned long long threads = 1ull * block[0] * block[1] * block[2];
    unsigned long long blocks = 1ull * grid[0] * grid[1] * grid[2];
    if (threads == 0 || threads > 1024 || block[2] > 64 || blocks == 0 || grid[1] > 65535 || grid[2] > 65535 ||
        grid[0] > 0x7fffffffu) {
        char buf[200];
        std::snprintf(buf, sizeof buf, "%s: invalid launch shape grid (%u,%u,%u) block (%u,%u,%u)", kernel, grid[0],
                      grid[1], grid[2], block[0], block[1], block[2]);
        set_error(err, err_cap, buf);
        return 1;
    }
    if (dyn_smem > 227u * 1024u) {
        set_error(err, err_cap, std::string(kernel) + ": " + std::to_string(dyn_smem) +
                                    " bytes of dynamic shared memory exceed sm_90's 227 KiB per block");
        return 1;
    }
    if (launch) {
        set_error(err, err_cap, "a kernel launched another kernel; the emulator runs one launch per thread");
        return 1;
    }

    Launch l;
    l.kernel = k;
    l.args = args;
    l.grid = dim3(grid[0], grid[1], grid[2]);
    l.block = dim3(block[0], block[1], block[2]);
    l.dyn_smem = dyn_smem;
    l.rng = Rng{seed};
    l.threads = static_cast<unsigned int>(threads);
    l.fibers.resize(threads);
    l.episodes.resize((threads + 31) / 32);
    l.groups.resize((threads + 31) / 32);
    l.race_check = race_check_enabled();
    l.counting = counting_enabled();
    if (l.race_check && dyn_shadow_store.size() * SHADOW_UNIT < dyn_smem)
        dyn_shadow_store.resize((dyn_smem + SHADOW_UNIT - 1) / SHADOW_UNIT);
    for (unsigned int t = 0; t < threads; ++t) {
        Fiber& f = l.fibers[t];
        f.linear = static_cast<int>(t);
        f.coords.thread_idx = uint3{t % block[0], t / block[0] % block[1], t / (block[0] * block[1])};
        f.coords.block_dim = l.block;
        f.coords.grid_dim = l.grid;
        f.coords.lane = t % 32;
        f.warp = static_cast<uint16_t>(t / 32);
        f.stack = take_stack();
        if (!f.stack.base) {
            for (unsigned int u = 0; u < t; ++u) stack_pool.stacks.push_back(l.fibers[u].stack);
            set_error(err, err_cap, "could not map fiber stacks for the emulated launch");
            return 1;
        }
    }
    if (!INSCLR_EMU_ASAN) {
        l.arena = static_cast<char*>(alloc_poisoned(STATIC_SHARED_BYTES + dyn_smem, SHARED_ALIGN));
        if (dyn_smem) l.dyn_shared = l.arena ? l.arena + STATIC_SHARED_BYTES : nullptr;
    } else if (dyn_smem) {
        l.dyn_shared = alloc_poisoned(dyn_smem, SHARED_ALIGN);
    }
    if ((!INSCLR_EMU_ASAN && !l.arena) || (dyn_smem && !l.dyn_shared)) {
        for (Fiber& f : l.fibers) stack_pool.stacks.push_back(f.stack);
        set_error(err, err_cap, "out of host memory for the launch's shared memory");
        return 1;
    }

    std::vector<uint3> order;
    order.reserve(blocks);
    for (unsigned int z = 0; z < grid[2]; ++z)
        for (unsigned int y = 0; y < grid[1]; ++y)
            for (unsigned int x = 0; x < grid[0]; ++x) order.push_back(uint3{x, y, z});
    l.rng.shuffle(order);

    launch = &l;
    if (l.arena) window_lo = reinterpret_cast<uintptr_t>(l.arena);
    window_all = l.counting || (l.race_check && !l.arena);
    bool ok = true;
    for (const uint3& b : order) {
        if (!run_block(l, b)) {
            ok = false;
            break;
        }
    }
    launch = nullptr;
    window_lo = window_bytes = 0;
    window_all = false;
    for (Fiber& f : l.fibers) stack_pool.stacks.push_back(f.stack);
    std::free(l.arena ? static_cast<void*>(l.arena) : l.dyn_shared);
    if (l.counting) collect(k->name, l.stats);
    if (l.raced) {
        std::string what = l.race.what;
        what.replace(what.find("@1"), 2, site(l.race.first_pc));
        what.replace(what.find("@2"), 2, site(l.race.second_pc));
        l.error = "shared-memory race: " + what;
    }
    if (!ok) {
        char buf[80];
        std::snprintf(buf, sizeof buf, " (emulator seed %llu)", seed);
        set_error(err, err_cap, std::string(kernel) + ": " + l.error + buf);
        return 1;
    }
    return 0;
}

// Runs `kernel` to completion. `args` is cuLaunchKernel's array of pointers to argument values;
// `arg_sizes` their sizes in bytes, checked against the kernel's parameters. Returns 0, or
// nonzero with a message in `err`; no C++ exception crosses into Rust.
int insclr_emu_launch(const char* kernel, const unsigned int grid[3], const unsigned int block[3],
                      unsigned int dyn_smem, void* const* args, const unsigned int* arg_sizes, unsigned int nargs,
                      unsigned long long seed, char* err, size_t err_cap) {
    try {
        return launch_impl(kernel, grid, block, dyn_smem, args, arg_sizes, nargs, seed, err, err_cap);
    } catch (const std::exception& e) {
        set_error(err, err_cap, std::string(kernel) + ": the emulator ran out of host memory (" + e.what() + ")");
        return 1;
    }
}

// ---- memory counters and sites, for the Rust side --------------------------------------------

struct InsclrEmuMemStat {
    const char* kernel;
    unsigned long long pc;
    unsigned int space, op, width, reserved;
    unsigned long long requests, transactions, ideal, bytes;
};

// Starts counting the launches of the calling OS thread (anything counted before is dropped).
void insclr_emu_memstats_begin() {
    delete thread_collected;
    thread_collected = new Collected();
}

static size_t export_stats(const Collected& from, InsclrEmuMemStat* out, size_t cap) {
    size_t i = 0;
    for (const auto& [key, val] : from) {
        if (i < cap) {
            // The kernel name is the registry's static string; find it so the pointer outlives us.
            auto it = registry().find(key.first);
            out[i] = InsclrEmuMemStat{it == registry().end() ? "?" : it->second->name,
                                      key.second.pc, key.second.space, key.second.op, key.second.width, 0,
                                      val.requests, val.transactions, val.ideal, val.bytes};
        }
        ++i;
    }
    return i;
}

// Copies up to `cap` records of the calling thread's counters (scope 1, since _begin) or the
// process's (scope 0, INSCLR_EMU_MEMSTATS=1) into `out`; returns how many there are.
size_t insclr_emu_memstats_read(int scope, InsclrEmuMemStat* out, size_t cap) {
    if (scope == 1) return thread_collected ? export_stats(*thread_collected, out, cap) : 0;
    std::lock_guard<std::mutex> lock(collected_mutex);
    return export_stats(collected, out, cap);
}

// Stops the calling thread's counting.
void insclr_emu_memstats_end() {
    delete thread_collected;
    thread_collected = nullptr;
}

// True when INSCLR_EMU_MEMSTATS=1 counts every launch of the process.
int insclr_emu_memstats_process() { return process_counting() ? 1 : 0; }

// The source line of a code address recorded by the counters, as "file:line[ < kernel.cu:line]".
void insclr_emu_site(unsigned long long pc, char* buf, size_t cap) { set_error(buf, cap, site(static_cast<uintptr_t>(pc))); }

// Looks up many code addresses with one addr2line run (a table's sites), before insclr_emu_site.
void insclr_emu_sites_prepare(const unsigned long long* pcs, size_t n) {
    look_up_sites(std::vector<uintptr_t>(pcs, pcs + n));
}

// ---- the compiler's access hooks ---------------------------------------------------------------
// The emulated kernels are compiled with -fsanitize=thread's instrumentation only (build/emu.rs):
// every load and store calls one of these with its address, and this runtime stands in for
// ThreadSanitizer's. The return address is the access's place in the kernel.

// Most accesses are to neither the block's shared memory nor (unless the counters run) anything
// counted: they return after one compare.
#define INSCLR_EMU_HOOK(name, n, write, op)                                                     \
    void name(void* p) {                                                                        \
        if (reinterpret_cast<uintptr_t>(p) - window_lo >= window_bytes && !window_all) return;  \
        on_access(p, n, write, reinterpret_cast<uintptr_t>(__builtin_return_address(0)), op);   \
    }
#define INSCLR_EMU_HOOKS(n)                                            \
    INSCLR_EMU_HOOK(__tsan_read##n, n, false, OP_LOAD)                 \
    INSCLR_EMU_HOOK(__tsan_write##n, n, true, OP_STORE)                \
    INSCLR_EMU_HOOK(__tsan_unaligned_read##n, n, false, OP_LOAD)       \
    INSCLR_EMU_HOOK(__tsan_unaligned_write##n, n, true, OP_STORE)      \
    INSCLR_EMU_HOOK(__tsan_volatile_read##n, n, false, OP_LOAD)        \
    INSCLR_EMU_HOOK(__tsan_volatile_write##n, n, true, OP_STORE)
INSCLR_EMU_HOOKS(1)
INSCLR_EMU_HOOKS(2)
INSCLR_EMU_HOOKS(4)
INSCLR_EMU_HOOKS(8)
INSCLR_EMU_HOOKS(16)
#undef INSCLR_EMU_HOOKS
#undef INSCLR_EMU_HOOK
void __tsan_read_range(void* p, size_t n) {
    on_access(p, static_cast<unsigned>(n), false, reinterpret_cast<uintptr_t>(__builtin_return_address(0)), OP_LOAD);
}
void __tsan_write_range(void* p, size_t n) {
    on_access(p, static_cast<unsigned>(n), true, reinterpret_cast<uintptr_t>(__builtin_return_address(0)), OP_STORE);
}
// Function-local statics' guards (a collective's descriptor) are read with an acquire load.
unsigned char __tsan_atomic8_load(const volatile unsigned char* a, int) { return *a; }
void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}

}  // extern "C"
