package androidx.lifecycle

import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.MainScope

abstract class ViewModel { protected open fun onCleared() {} }
open class AndroidViewModel(private val app: android.app.Application) : ViewModel() {
    @Suppress("UNCHECKED_CAST") fun <T : android.app.Application> getApplication(): T = app as T
}
class SavedStateHandle {
    operator fun <T> get(key: String): T? = null
    operator fun <T> set(key: String, value: T?) {}
    fun <T> remove(key: String): T? = null
}
val ViewModel.viewModelScope: CoroutineScope get() = MainScope()
abstract class Lifecycle { enum class State { DESTROYED, INITIALIZED, CREATED, STARTED, RESUMED } }
interface LifecycleOwner { val lifecycle: Lifecycle }
val LifecycleOwner.lifecycleScope: CoroutineScope get() = MainScope()
suspend fun LifecycleOwner.repeatOnLifecycle(state: Lifecycle.State, block: suspend CoroutineScope.() -> Unit) {}
