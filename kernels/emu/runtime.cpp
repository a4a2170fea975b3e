// The emulated device's runtime: kernel lookup, launches, the per-block fiber scheduler,
// barriers, warp collectives and shared memory. See emu.cuh for the model.
//
// One launch runs on the calling OS thread from start to end; launches on different OS threads
// share nothing but the read-only kernel registry, so the Rust side needs no lock.
#include <cstdarg>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <string>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>
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

thread_local const Coords* current = nullptr;

namespace {

constexpr unsigned char POISON = 0xFF;
// Generous for kernels' local arrays and for AddressSanitizer's larger frames; only the pages a
// fiber touches are ever committed.
constexpr size_t STACK_BYTES = 512 * 1024;
constexpr size_t SHARED_ALIGN = 128;

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
    static size_t page_size() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }
};

// A cp.async in flight: its source read at issue, written to shared memory by the wait that
// covers its group.
struct AsyncCopy {
    void* dst;
    unsigned char data[16];
    unsigned int bytes;
    unsigned int group;
};

struct Fiber {
    Context ctx;
    Stack stack;
    Coords coords;
    int linear = 0;
    State state = State::Ready;
    int barrier_pred = 0;
    int barrier_result = 0;
    const Collective* waiting_op = nullptr;
    unsigned int waiting_mask = 0;
    void* asan_fake_stack = nullptr;
    std::vector<AsyncCopy> copies;
    unsigned int committed = 0;  // cp.async groups committed so far
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
    Context scheduler;
    const void* scheduler_stack_lo = nullptr;
    size_t scheduler_stack_size = 0;
    Fiber* running = nullptr;
    bool failed = false;
    std::string error;
    unsigned long long ticks = 0;
};

thread_local Launch* launch = nullptr;

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

// Runs one block to completion; false (with l.error set) when it fails or would hang.
bool run_block(Launch& l, uint3 block_idx) {
    for (Fiber& f : l.fibers) {
        f.coords.block_idx = block_idx;
        f.state = State::Ready;
        f.waiting_op = nullptr;
        f.copies.clear();
        f.committed = 0;
        context_start(f.ctx, f.stack.lo(), STACK_BYTES);
    }
    for (auto& e : l.episodes) e.clear();
    if (l.dyn_smem) std::memset(l.dyn_shared, POISON, l.dyn_smem);

    std::vector<Fiber*> order;
    order.reserve(l.fibers.size());
    bool ok = true;
    while (ok) {
        order.clear();
        size_t done = 0, at_barrier = 0;
        for (Fiber& f : l.fibers) {
            if (f.state == State::Ready) order.push_back(&f);
            done += f.state == State::Done;
            at_barrier += f.state == State::AtBarrier;
        }
        if (order.empty()) {
            if (done == l.fibers.size()) break;
            if (at_barrier + done == l.fibers.size()) {
                // Everyone still running has reached __syncthreads (exited threads count as
                // arrived, as on the hardware): compute the predicate reductions, release.
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
                continue;
            }
            l.failed = true;
            l.error = "deadlock in " + block_name(l) + ": " + waiting_report(l) +
                      " (a GPU would hang here: threads wait at a barrier and in a warp collective, or a collective's lanes never all arrive)";
            ok = false;
            break;
        }
        l.rng.shuffle(order);
        for (Fiber* f : order) {
            if (f->state != State::Ready) continue;
            resume(*f);
            if (l.failed) {
                ok = false;
                break;
            }
        }
    }
    for (const SharedAlloc& s : l.shared) std::free(s.ptr);
    l.shared.clear();
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
    done.op->combine(done.data, mask);
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

void yield() { switch_to_scheduler(false); }

unsigned long long clock_ticks() { return ++launch->ticks; }

void* block_shared(const void* key, size_t bytes, size_t align) {
    Launch& l = *launch;
    for (const SharedAlloc& s : l.shared)
        if (s.key == key) return s.ptr;
    void* p = alloc_poisoned(bytes, std::max(align, SHARED_ALIGN));
    if (!p) fail("out of host memory for %zu bytes of shared memory", bytes);
    l.shared.push_back(SharedAlloc{key, p, bytes});
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

void async_copy(void* dst, const void* src, unsigned int bytes) {
    Fiber& f = *launch->running;
    if (bytes == 0 || bytes > 16 || reinterpret_cast<uintptr_t>(dst) % bytes || reinterpret_cast<uintptr_t>(src) % bytes)
        fail("cp.async of %u bytes from %p to %p: addresses must be aligned to the size", bytes, src, dst);
    if (!in_shared(dst, bytes)) fail("cp.async destination %p is not in this block's shared memory", dst);
    if (in_shared(src, bytes)) fail("cp.async source %p is in shared memory; it must be global", src);
    AsyncCopy c;
    c.dst = dst;
    c.bytes = bytes;
    c.group = f.committed;
    std::memcpy(c.data, src, bytes);
    f.copies.push_back(c);
}

void async_commit() { ++launch->running->committed; }

void async_wait(unsigned int pending) {
    Fiber& f = *launch->running;
    // Groups below `done` have landed; uncommitted copies count as a group of their own.
    unsigned int done = f.committed >= pending ? f.committed - pending : 0;
    std::vector<AsyncCopy> still;
    for (const AsyncCopy& c : f.copies) {
        if (c.group < done) {
            std::memcpy(c.dst, c.data, c.bytes);
        } else {
            still.push_back(c);
        }
    }
    f.copies.swap(still);
}

}  // namespace insclr_emu

using namespace insclr_emu;

extern "C" {

// Poisoned, 256-byte aligned, as cudaMalloc's alignment; null when out of memory.
void* insclr_emu_alloc(size_t bytes) { return alloc_poisoned(bytes == 0 ? 1 : bytes, 256); }

void insclr_emu_free(void* p) { std::free(p); }

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
    for (unsigned int t = 0; t < threads; ++t) {
        Fiber& f = l.fibers[t];
        f.linear = static_cast<int>(t);
        f.coords.thread_idx = uint3{t % block[0], t / block[0] % block[1], t / (block[0] * block[1])};
        f.coords.block_dim = l.block;
        f.coords.grid_dim = l.grid;
        f.coords.lane = t % 32;
        f.stack = take_stack();
        if (!f.stack.base) {
            for (unsigned int u = 0; u < t; ++u) stack_pool.stacks.push_back(l.fibers[u].stack);
            set_error(err, err_cap, "could not map fiber stacks for the emulated launch");
            return 1;
        }
    }
    if (dyn_smem) {
        l.dyn_shared = alloc_poisoned(dyn_smem, SHARED_ALIGN);
        if (!l.dyn_shared) {
            for (Fiber& f : l.fibers) stack_pool.stacks.push_back(f.stack);
            set_error(err, err_cap, "out of host memory for the launch's dynamic shared memory");
            return 1;
        }
    }

    std::vector<uint3> order;
    order.reserve(blocks);
    for (unsigned int z = 0; z < grid[2]; ++z)
        for (unsigned int y = 0; y < grid[1]; ++y)
            for (unsigned int x = 0; x < grid[0]; ++x) order.push_back(uint3{x, y, z});
    l.rng.shuffle(order);

    launch = &l;
    bool ok = true;
    for (const uint3& b : order) {
        if (!run_block(l, b)) {
            ok = false;
            break;
        }
    }
    launch = nullptr;
    for (Fiber& f : l.fibers) stack_pool.stacks.push_back(f.stack);
    std::free(l.dyn_shared);
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

}  // extern "C"
