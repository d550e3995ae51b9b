/*
 * A cache of large CPU buffers in front of torch's CPU allocator (see reformer_seq/block_cache.py).
 *
 * glibc hands every buffer above 32 MB (whatever mallopt says) to the kernel as a fresh mapping,
 * and the kernel zeroes each page on first touch; at 256K tokens a training step allocates about
 * fifty 64 MB activation-sized buffers, so ~8% of its CPU time went to clearing pages that were
 * overwritten at once. This allocator keeps freed buffers of at least `min_bytes` and hands one
 * back when a buffer of exactly the same size is asked for again (the same layers allocate the
 * same sizes step after step). Smaller requests go straight to torch's allocator.
 *
 * Resident memory does not grow with it. A request that finds no block of its size first frees
 * kept blocks (oldest first) until the blocks in use, the kept ones and the new one together are
 * no more than the most that was ever in use at once: the cache only holds memory that the
 * process has already needed all of. Kept bytes are also capped by `cap_bytes` (if set).
 * Measured at 1M tokens: peak 3596 MiB with the cache, 3618 MiB without.
 *
 * Plain C++ against c10/core/Allocator.h only (built on first use against the installed torch).
 */
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <pthread.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <vector>

namespace {

struct Block {
    void *ptr;                  // the data; also the base allocator's context (checked)
    c10::DeleterFnPtr release;  // the base allocator's deleter
    size_t bytes;
};

// Never destroyed (allocated once, not freed): torch may free tensors during its own static
// destruction at exit, after this library's statics would be gone.
pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
std::unordered_map<void *, Block> &in_use = *new std::unordered_map<void *, Block>();  // handed out, by pointer
std::vector<Block> &kept = *new std::vector<Block>();  // freed blocks, oldest first
size_t kept_bytes = 0, cap_bytes = 0, min_bytes = SIZE_MAX;
size_t used_bytes = 0, peak_used = 0;  // bytes of blocks handed out, now and at most so far
long long hits = 0, misses = 0;
c10::Allocator *base = nullptr;

struct Lock {
    Lock() { pthread_mutex_lock(&mu); }
    ~Lock() { pthread_mutex_unlock(&mu); }
};

// With mu held: move the oldest kept block to `drop` (freed after unlocking: unmapping is slow).
void evict_oldest_locked(std::vector<Block> &drop) {
    kept_bytes -= kept.front().bytes;
    drop.push_back(kept.front());
    kept.erase(kept.begin());
}

// Called with mu held; the blocks are freed after unlocking.
std::vector<Block> take_kept_locked() {
    std::vector<Block> out;
    out.swap(kept);
    kept_bytes = 0;
    return out;
}

void free_blocks(const std::vector<Block> &blocks) {
    for (const Block &b : blocks) b.release(b.ptr);
}

void cached_delete(void *ptr) {
    std::vector<Block> drop;
    bool ours;
    {
        Lock g;
        auto it = in_use.find(ptr);
        ours = it != in_use.end();
        if (ours) {
            Block b = it->second;
            in_use.erase(it);
            used_bytes -= b.bytes;
            if (b.bytes > cap_bytes) {
                drop.push_back(b);
            } else {
                while (kept_bytes + b.bytes > cap_bytes && !kept.empty()) evict_oldest_locked(drop);
                kept.push_back(b);
                kept_bytes += b.bytes;
            }
        }
    }
    if (!ours) {
        // A small buffer torch allocated through us (raw_allocate) and frees through our
        // raw_deleter: it came from the base allocator, whose deleter frees it.
        c10::DeleterFnPtr d = base->raw_deleter();
        if (d) d(ptr);
    }
    free_blocks(drop);
}

struct BlockCache final : c10::Allocator {
    c10::DataPtr allocate(size_t n) override {
        if (n < min_bytes) return base->allocate(n);
        std::vector<Block> drop;
        {
            Lock g;
            for (size_t i = kept.size(); i-- > 0;) {  // newest first: the warmest in cache
                if (kept[i].bytes == n) {
                    Block b = kept[i];
                    kept.erase(kept.begin() + (std::ptrdiff_t)i);
                    kept_bytes -= n;
                    in_use[b.ptr] = b;
                    used_bytes += n;
                    if (used_bytes > peak_used) peak_used = used_bytes;
                    hits++;
                    return c10::DataPtr(b.ptr, b.ptr, &cached_delete, c10::Device(c10::DeviceType::CPU));
                }
            }
            misses++;
            // Keep what fits beside the new block under the most ever in use at once; free the rest.
            const size_t limit = peak_used > used_bytes + n ? peak_used : used_bytes + n;
            while (!kept.empty() && used_bytes + kept_bytes + n > limit) evict_oldest_locked(drop);
        }
        free_blocks(drop);
        c10::DataPtr d = base->allocate(n);
        void *p = d.get();
        if (p == nullptr || d.get_context() != p) return d;  // not a plain block: not cached
        c10::DeleterFnPtr release = d.get_deleter();
        d.release_context();
        Lock g;
        in_use[p] = Block{p, release, n};
        used_bytes += n;
        if (used_bytes > peak_used) peak_used = used_bytes;
        return c10::DataPtr(p, p, &cached_delete, c10::Device(c10::DeviceType::CPU));
    }

    c10::DeleterFnPtr raw_deleter() const override { return &cached_delete; }

    void copy_data(void *dest, const void *src, std::size_t count) const override {
        default_copy_data(dest, src, count);
    }
};

BlockCache &the_cache = *new BlockCache();  // never destroyed, like the containers above

// A fork (e.g. a DataLoader worker) while another thread holds the lock must not leave the
// child's copy locked forever.
void before_fork() { pthread_mutex_lock(&mu); }
void after_fork() { pthread_mutex_unlock(&mu); }

}  // namespace

extern "C" {

// Put the cache in front of torch's CPU allocator (once), or change its limits (cap < 0: no cap
// but the peak rule). Returns 1 when the cache is torch's CPU allocator afterwards, 0 when
// another allocator has precedence.
int seq_block_cache_enable(long long cap, long long min_size) {
    std::vector<Block> drop;
    int ok;
    {
        Lock g;
        cap_bytes = cap < 0 ? SIZE_MAX : (size_t)cap;
        min_bytes = min_size > 0 ? (size_t)min_size : 1;
        if (base == nullptr) {
            base = c10::GetCPUAllocator();
            c10::SetCPUAllocator(&the_cache, /*priority=*/1);
            pthread_atfork(before_fork, after_fork, after_fork);
        }
        while (kept_bytes > cap_bytes && !kept.empty()) evict_oldest_locked(drop);
        ok = c10::GetCPUAllocator() == &the_cache;
    }
    free_blocks(drop);
    return ok;
}

// Free every kept block (blocks in use are unaffected).
void seq_block_cache_release(void) {
    std::vector<Block> drop;
    {
        Lock g;
        drop = take_kept_locked();
    }
    free_blocks(drop);
}

// For tests: hold the cache's lock for `usec` microseconds (from a thread, so that a fork happens
// while another thread holds it; the fork handlers must wait for it and leave the child a free lock).
void seq_block_cache_hold_lock(long long usec) {
    Lock g;
    usleep((useconds_t)usec);
}

// hits, misses, kept bytes, blocks in use
void seq_block_cache_stats(long long *out) {
    Lock g;
    out[0] = hits;
    out[1] = misses;
    out[2] = (long long)kept_bytes;
    out[3] = (long long)in_use.size();
}

}  // extern "C"
