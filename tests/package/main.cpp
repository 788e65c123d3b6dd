// Consumer of an installed (or fetched) modelpool: starts and stops a pool.
#include <modelpool/modelpool.hpp>

#include <cstdio>

int main() {
    modelpool::Pool pool{};
    pool.stop();
    std::puts("modelpool consumer: pool started and stopped");
    return 0;
}
