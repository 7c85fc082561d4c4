// Empty Python module `l2kd._C`. Importing it loads the shared library, whose
// static initialisers register the l2kd::* operators with the dispatcher; ops
// are reached through torch.ops.l2kd, not through pybind.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "l2kd compiled operators (see torch.ops.l2kd)", -1, nullptr};
  return PyModule_Create(&module_def);
}
}
