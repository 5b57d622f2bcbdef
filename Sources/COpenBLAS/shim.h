#include <cblas.h>
// Declared by OpenBLAS's cblas.h on most builds; repeated so the module is explicit about what it uses.
char *openblas_get_corename(void);
char *openblas_get_config(void);
void openblas_set_num_threads(int num_threads);
int openblas_get_num_threads(void);
